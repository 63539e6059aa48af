"""Arithmetic word problems solved by ProgramOfThought: the model writes Python, a sandbox
runs it, and the answer is read from what it printed.

Deterministic given a seed. The scripted teacher stands in for a strong model: it reads
the problem and writes a short correct program, so the student learns to write code.
"""

from __future__ import annotations

import random
import re

import apprentice as ap

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana")
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cards", "shells")

# (problem, program): one family of problems each; {a}, {b}, {c} are numbers. Each
# program uses the numbers in the order the problem gives them, a habit a student copies.
TEMPLATES = (
    (
        "{name} has {a} {item}. {name} buys {b} more and gives away {c}. How many {item} are left?",
        "{item} = {a} + {b} - {c}\nprint({item})",
    ),
    (
        "A box holds {a} {item}. How many {item} are in {b} boxes?",
        "total = {a} * {b}\nprint(total)",
    ),
    (
        "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
        "each = {a} // {b}\nprint(each)",
    ),
    (
        "One of the {item} costs {a} dollars. {name} buys {b} of them and pays with "
        "{c} dollars. How much change is left?",
        "cost = {a} * {b}\nprint({c} - cost)",
    ),
    (
        "{name} reads {a} pages a day for {b} days and then {c} more pages. "
        "How many pages is that in total?",
        "pages = {a} * {b} + {c}\nprint(pages)",
    ),
)


def _numbers(kind: int, rng: random.Random) -> dict[str, int]:
    a, b = rng.randint(2, 30), rng.randint(2, 9)
    if kind == 0:
        return {"a": a, "b": b, "c": rng.randint(1, a + b)}
    if kind == 2:
        return {"a": a * b, "b": b}
    if kind == 3:
        return {"a": rng.randint(2, 9), "b": b, "c": rng.randint(10, 10 * 9 + 20) + 81}
    return {"a": a, "b": b, "c": rng.randint(1, 40)}


def solve(question: str) -> str:
    """The teacher's program for ``question`` (what a strong model would write)."""
    for problem, program in TEMPLATES:
        pattern = re.escape(problem)
        for slot in ("name", "item", "a", "b", "c"):  # first use captures, later ones match it
            placeholder = re.escape("{" + slot + "}")
            pattern = pattern.replace(placeholder, rf"(?P<{slot}>\w+)", 1)
            pattern = pattern.replace(placeholder, f"(?P={slot})")
        match = re.fullmatch(pattern, question)
        if match:
            return program.format(**match.groupdict())
    raise ValueError(f"the teacher does not know this kind of problem: {question!r}")


def make_examples(n: int, seed: int = 0) -> list[ap.Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        kind = rng.randrange(len(TEMPLATES))
        slots = {"name": rng.choice(_NAMES), "item": rng.choice(_ITEMS), **_numbers(kind, rng)}
        question = TEMPLATES[kind][0].format(**slots)
        scope: dict = {}
        program = TEMPLATES[kind][1].format(**slots).replace("print(", "result = (")
        exec(program, scope)  # our own template, not model output: the gold answer
        examples.append(
            ap.Example(question=question, answer=scope["result"]).with_inputs("question")
        )
    return examples


class SolveArithmetic(ap.Signature):
    """Solve the arithmetic word problem."""

    question: str = ap.InputField()
    answer: int = ap.OutputField()


class ArithmeticPoT(ap.Module):
    def __init__(self) -> None:
        self.solve = ap.ProgramOfThought(SolveArithmetic, max_iters=3)

    def forward(self, question: str) -> ap.Prediction:
        result = self.solve(question=question)
        return ap.Prediction(answer=result.answer, code=result.code)


def teacher(signature, inputs: dict) -> dict:
    """Writes the program (first try or a fix), then reads the answer off its output."""
    if "code" in signature.output_fields:
        return {"code": solve(inputs["question"])}
    return {"answer": int(inputs["code_output"].split()[-1])}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.answer == example.answer)
