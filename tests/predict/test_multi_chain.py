"""MultiChainComparison with scripted teachers: attempts rendered, compared, answered."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import apprentice as ap


def _attempts_teacher(signature, inputs):
    """Three chains of thought that disagree; then a comparer that takes the majority."""
    if "attempts" not in signature.input_fields:
        return {"reasoning": "7 * 6 is 42", "answer": "42"}
    answers = re.findall(r"answer: (\S+)»", inputs["attempts"])
    best, votes = Counter(answers).most_common(1)[0]
    return {"rationale": f"{votes} of {len(answers)} attempts say {best}", "answer": best}


def _noisy_sampler():
    replies = iter(["41", "42", "42"])

    def sample(signature, inputs):
        answer = next(replies)
        return {"reasoning": f"I think it is {answer}", "answer": answer}

    return sample


class Compare(ap.Module):
    def __init__(self) -> None:
        self.attempt = ap.ChainOfThought("question -> answer", n=3)
        self.compare = ap.MultiChainComparison("question -> answer", M=3)

    def forward(self, question):
        return self.compare(self.attempt(question=question), question=question)


def test_attempts_are_rendered_and_compared():
    program = Compare()
    program.attempt.lm = ap.ScriptedLM(_noisy_sampler())
    program.compare.predict.lm = ap.ScriptedLM(_attempts_teacher)
    with ap.capture(program) as steps:
        pred = program(question="7 * 6?")
    assert pred.answer == "42" and pred.rationale == "2 of 3 attempts say 42"
    assert [s.predictor for s in steps] == ["attempt", "compare.predict"]
    assert steps[1].inputs["attempts"].splitlines() == [
        "Student Attempt #1: «reasoning: I think it is 41 answer: 41»",
        "Student Attempt #2: «reasoning: I think it is 42 answer: 42»",
        "Student Attempt #3: «reasoning: I think it is 42 answer: 42»",
    ]
    assert list(steps[1].output) == ["rationale", "answer"]


def test_attempts_may_be_a_list_of_predictions_or_dicts():
    mcc = ap.MultiChainComparison("question -> answer: int", M=2, reasoning_key="why")
    mcc.predict.lm = ap.ScriptedLM(_attempts_teacher)
    pred = mcc([ap.Prediction(why="a", answer=3), {"why": "b", "answer": 3}], question="?")
    assert pred.answer == 3


def test_the_wrong_number_of_attempts_says_how_to_sample_them():
    mcc = ap.MultiChainComparison("question -> answer", M=3)
    with pytest.raises(ValueError, match=r"needs 3 attempts, got 2.*n=3"):
        mcc([{"answer": "1"}, {"answer": "2"}], question="?")
