"""BootstrapFinetune distils a program that samples three chains of thought and compares them
with MultiChainComparison into a tiny student, which then runs both steps itself on held-out
tickets (slow: trains a model).

The teacher's third sample on every ticket names the wrong queue, so the comparer must
weigh the attempts: it answers with the majority."""

from __future__ import annotations

import pytest
from recipes.demo.attempts import CompareTriage, metric, sampling_teacher
from recipes.demo.task import make_examples

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.train.tiny import make_tiny_student, task_corpus

HELDOUT = make_examples(40, seed=7)


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
