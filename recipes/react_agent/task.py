"""A shop assistant agent: ReAct with two tools (a price lookup table and a calculator).

Questions ask for the total price of two quantities of catalogue items. The agent looks up
both prices, computes the total with the calculator, and finishes; the extract step then
answers with the number. The items are made up, so no model knows a price without the tool.
Deterministic given a seed, so recipes, tests and benchmarks see the same data.
"""

from __future__ import annotations

import ast
import operator
import random
import re

import apprentice as ap

CATALOGUE = {
    "widget": 4,
    "gizmo": 12,
    "sprocket": 7,
    "flange": 15,
    "doohickey": 9,
    "gasket": 3,
    "thingamajig": 21,
    "valve": 18,
    "bracket": 6,
    "coupler": 11,
    "spindle": 25,
    "grommet": 2,
}
_QUESTIONS = [
    "How much do {q1} {i1} and {q2} {i2} cost in total?",
    "I want {q1} {i1} and {q2} {i2}. What is the total price?",
    "What is the total cost of {q1} {i1} plus {q2} {i2}?",
    "Please price {q1} {i1} together with {q2} {i2}.",
]


def make_examples(n: int, seed: int = 0) -> list[ap.Example]:
    rng = random.Random(seed)
    items = sorted(CATALOGUE)
    examples = []
    for _ in range(n):
        i1, i2 = rng.sample(items, 2)
        q1, q2 = rng.randint(1, 9), rng.randint(1, 9)
        question = rng.choice(_QUESTIONS).format(q1=q1, i1=i1, q2=q2, i2=i2)
        total = q1 * CATALOGUE[i1] + q2 * CATALOGUE[i2]
        examples.append(ap.Example(question=question, answer=total).with_inputs("question"))
    return examples


# -- the tools: plain functions; their names, docstrings and hints are the model's manual --
def price(item: str) -> int:
    """The unit price of an item in the shop's catalogue, in dollars."""
    key = item.strip().lower()
    if key not in CATALOGUE:
        raise KeyError(f"no item {item!r} in the catalogue")
    return CATALOGUE[key]


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def calculate(expression: str) -> int | float:
    """Evaluates arithmetic with + - * / and parentheses, e.g. "3 * 4 + 2 * 7"."""

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(f"only numbers and + - * / are allowed, not {ast.unparse(node)!r}")

    result = value(ast.parse(expression, mode="eval").body)
    return int(result) if float(result).is_integer() else result


class ShopQuestion(ap.Signature):
    """Answer questions about prices in the shop's catalogue."""

    question: str = ap.InputField()
    answer: int = ap.OutputField(desc="the total in dollars")


class ShopAgent(ap.Module):
    def __init__(self) -> None:
        self.agent = ap.ReAct(ShopQuestion, tools=[price, calculate], max_iters=6)

    def forward(self, question: str) -> ap.Prediction:
        return self.agent(question=question)


# -- the scripted teacher: plays the agent by rule, the way a strong model would ----------
_ASKED = re.compile(r"(\d) (\w+)")
_SEEN_PRICE = re.compile(r'tool: price\(\{"item": "(\w+)"\}\)\nobservation: (\d+)')
_SEEN_TOTAL = re.compile(r"tool: calculate\(.*\)\nobservation: (-?[\d.]+)")


def teacher(signature, inputs: dict) -> dict:
    trajectory = inputs["trajectory"]
    if "next_tool_name" not in signature.output_fields:  # the extract step
        total = _SEEN_TOTAL.findall(trajectory)[-1]
        return {"reasoning": f"The calculator gave {total}.", "answer": int(float(total))}
    (q1, i1), (q2, i2) = _ASKED.findall(inputs["question"])[:2]
    known = dict(_SEEN_PRICE.findall(trajectory))
    totals = _SEEN_TOTAL.findall(trajectory)
    if totals:
        return _turn(f"The total is {totals[-1]}.", "finish", {})
    for item in (i1, i2):
        if item not in known:
            return _turn(f"I need the price of {item}.", "price", {"item": item})
    expression = f"{q1} * {known[i1]} + {q2} * {known[i2]}"
    return _turn(f"Now I add up {expression}.", "calculate", {"expression": expression})


def _turn(thought: str, tool: str, args: dict) -> dict:
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.answer == example.answer)


def expected_calls(example: ap.Example) -> list[tuple[str, dict]]:
    """The tool calls a correct agent makes for this question, in order."""
    (q1, i1), (q2, i2) = _ASKED.findall(example.question)[:2]
    expression = f"{q1} * {CATALOGUE[i1]} + {q2} * {CATALOGUE[i2]}"
    return [
        ("price", {"item": i1}),
        ("price", {"item": i2}),
        ("calculate", {"expression": expression}),
        ("finish", {}),
    ]


def calls(prediction: ap.Prediction) -> list[tuple[str, dict]]:
    """The tool calls the agent made (unusable replies left out)."""
    return [
        (t["tool_name"], dict(t["tool_args"]))
        for t in prediction.trajectory
        if t.get("tool_name") is not None
    ]
