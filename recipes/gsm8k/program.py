"""GSM8K: grade-school math word problems solved with ChainOfThought.

The data is the HF ``openai/gsm8k`` dataset (``main`` config) saved to disk once, on a
machine with internet:

    python -c "from datasets import load_dataset; load_dataset('openai/gsm8k', 'main').save_to_disk('data/gsm8k')"

Its ``answer`` field is the worked solution ending in ``#### <number>``; the metric compares
that number with the program's answer.
"""

from __future__ import annotations

import re

import apprentice as ap

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class SolveMath(ap.Signature):
    """Solve the math word problem. Give the final answer as a number only."""

    question: str = ap.InputField()
    answer: str = ap.OutputField(desc="the final numeric answer, digits only")


class GSM8K(ap.Module):
    def __init__(self) -> None:
        self.solve = ap.ChainOfThought(SolveMath)

    def forward(self, question: str) -> ap.Prediction:
        return ap.Prediction(answer=self.solve(question=question).answer)


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (after ``####`` when present), commas removed."""
    text = str(text).split("####")[-1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    gold, got = parse_number(example.answer), parse_number(prediction.answer)
    return float(gold is not None and got is not None and abs(gold - got) < 1e-6)
