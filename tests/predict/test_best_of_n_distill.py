"""BootstrapFinetune distils a program whose classify step runs inside BestOfN into a tiny
student, which then runs BestOfN itself on held-out tickets (slow: trains a model).

The teacher is a sampler whose first reply on some tickets is wrong; BestOfN's verifier
(the ticket must hold evidence for the chosen queue) sends those tickets to a second
attempt. Only the chosen attempt of each ticket becomes a training row."""

from __future__ import annotations

import pytest
from recipes.demo.attempts import ClassifyBest, flaky_teacher, flawed, metric
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
        except RuntimeError:  # BestOfN: no attempt could be parsed
            continue
    return total / len(examples)


@pytest.mark.slow
def test_the_distilled_student_runs_best_of_n_itself(tmp_path):
    trainset = make_examples(150)
    n_flawed = sum(flawed(e.ticket) for e in trainset)
    lm = ap.ScriptedLM(flaky_teacher())
    student = make_tiny_student(
        "causal",
        task_corpus(ClassifyBest(), trainset, lm),
        tmp_path / "student",
        vocab_size=600,
        hidden_size=128,
        num_layers=2,
    )
    untrained = ClassifyBest()
    untrained.set_lm(LocalLM(student, max_new_tokens=16))
    untrained_score = score(untrained, HELDOUT[:10])

    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, epochs=20, learning_rate=3e-3, save_every=10**6),
    )
    compiled = optimizer.compile(ClassifyBest(), trainset=trainset, teacher=lm)

    # Every ticket ends with the right queue; each flawed ticket's first attempt is thrown away.
    assert optimizer.results["bootstrap"]["kept"] == len(trainset)
    counts, drops = (optimizer.results["dataset"][k] for k in ("counts", "drops"))
    rows = counts["train"].get("best.module", 0) + counts["validation"].get("best.module", 0)
    assert rows == len(trainset), counts
    assert drops["rejected attempt"] == n_flawed > 0, drops

    assert [type(p.lm) for p in compiled.predictors()] == [LocalLM]
    trained_score = score(compiled)
    compiled(**HELDOUT[0].inputs())
    assert compiled.best.scores == [1.0]  # the student's own first attempt passed the verifier
    # Stated bar: >= 0.8 on 40 held-out tickets, where the untrained student parses
    # nothing. Measured: 0.000 untrained, 1.000 trained (23 s for the test on a busy
    # 2-core box, load ~3); 10 epochs at hidden_size=96 gave 0.85.
    assert untrained_score == 0.0
    assert trained_score >= 0.8, trained_score
