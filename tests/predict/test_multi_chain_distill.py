"""BootstrapFinetune distils a program that samples three chains of thought and compares them
with MultiChainComparison into a tiny student, which then runs both steps itself on held-out
tickets (slow: trains a model).

The teacher's third sample on every ticket names the wrong queue, so the comparer must
weigh the attempts: it answers with the majority."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from recipes.demo.task import CATEGORIES, ClassifyTicket, make_examples, teacher

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.train.tiny import make_tiny_student, task_corpus

HELDOUT = make_examples(40, seed=7)


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.category == example.category)


class CompareTriage(ap.Module):
    def __init__(self) -> None:
        self.attempt = ap.ChainOfThought(ClassifyTicket, n=3)
        self.compare = ap.MultiChainComparison(ClassifyTicket, M=3)

    def forward(self, ticket: str) -> ap.Prediction:
        return self.compare(self.attempt(ticket=ticket), ticket=ticket)


def sampling_teacher():
    """The demo's teacher for the attempts, except that every third sample (the last of
    each request's three) names the next queue; the comparer answers with the majority."""
    calls: Counter = Counter()

    def answer(signature, inputs):
        if "attempts" in signature.input_fields:
            votes = Counter(re.findall(r"category: (\w+)»", inputs["attempts"]))
            best, count = votes.most_common(1)[0]
            return {"rationale": f"{count} of 3 attempts say {best}.", "category": best}
        reply = teacher(signature, inputs)
        calls[inputs["ticket"]] += 1
        if calls[inputs["ticket"]] % 3 == 0:
            wrong = CATEGORIES[(CATEGORIES.index(reply["category"]) + 1) % 3]
            reply = {"reasoning": f"The ticket mentions {wrong} matters.", "category": wrong}
        return reply

    return answer


def score(program, examples=HELDOUT) -> float:
    total = 0.0
    for example in examples:
        try:
            total += metric(example, program(**example.inputs()))
        except ap.ParseError:  # an attempt or the comparison could not be parsed: scores 0
            continue
    return total / len(examples)


@pytest.mark.slow
def test_the_distilled_student_compares_its_own_attempts(tmp_path):
    trainset = make_examples(150)
    lm = ap.ScriptedLM(sampling_teacher())
    student = make_tiny_student(
        "causal",
        task_corpus(CompareTriage(), trainset, lm),
        tmp_path / "student",
        vocab_size=600,
        hidden_size=128,
        num_layers=2,
    )
    untrained = CompareTriage()
    untrained.set_lm(LocalLM(student, max_new_tokens=24))
    untrained_score = score(untrained, HELDOUT[:10])

    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, epochs=20, learning_rate=3e-3, save_every=10**6),
    )
    compiled = optimizer.compile(CompareTriage(), trainset=trainset, teacher=lm)

    assert optimizer.results["bootstrap"]["kept"] == len(trainset)
    counts = optimizer.results["dataset"]["counts"]
    rows = {p: counts["train"].get(p, 0) + counts["validation"].get(p, 0) for p in counts["train"]}
    # One row per step and ticket: the attempts step trains on its first sample.
    assert rows == {"attempt": 150, "compare.predict": 150}, rows

    assert all(isinstance(p.lm, LocalLM) for p in compiled.predictors())
    trained_score = score(compiled)
    with ap.capture(compiled) as steps:
        prediction = compiled(**HELDOUT[0].inputs())
    # The student writes the three attempts and the comparison that reads them.
    assert [s.predictor for s in steps] == ["attempt", "compare.predict"]
    assert len(steps[0].completions) == 3 and prediction.rationale
    # Stated bar: >= 0.8 on 40 held-out tickets, where the untrained student parses
    # nothing. Measured: 0.000 untrained, 1.000 trained (40-63 s for the test on a busy
    # 2-core box, load ~3). The student's greedy attempts agree, yet its rationale says
    # "2 of 3 attempts say ...": the teacher's comparisons all saw one wrong attempt.
    assert untrained_score == 0.0
    assert trained_score >= 0.8, trained_score
