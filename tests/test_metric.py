"""Metrics with two or three parameters score the same everywhere a metric is taken."""

from __future__ import annotations

import pytest
from recipes.demo.task import TicketTriage, make_examples, teacher

import apprentice as ap


def two(example, prediction):
    return prediction.category == example.category


def three(example, prediction, trace):
    assert trace is None or trace.steps  # a trace, when one is passed, holds the steps
    return prediction.category == example.category


def defaulted(example, prediction, trace=None):
    return prediction.category == example.category


@pytest.mark.parametrize("metric", [two, three, defaulted], ids=["two", "three", "defaulted"])
def test_every_arity_scores_in_evaluate_bootstrap_and_few_shot(metric, tmp_path):
    examples = make_examples(6)
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(teacher))
    assert ap.Evaluate(devset=examples, metric=metric, display_progress=False)(program).score == 1.0

    result = ap.bootstrap_traces(
        TicketTriage(),
        examples,
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        store=tmp_path / "traces",
        progress=False,
    )
    assert result.summary()["kept"] == 6 and result.summary()["failed"] == 0, result.summary()

    optimizer = ap.BootstrapFewShot(metric, max_bootstrapped_demos=2, max_labeled_demos=0)
    compiled = optimizer.compile(TicketTriage(), trainset=examples, teacher=ap.ScriptedLM(teacher))
    assert [len(p.demos) for p in compiled.predictors()] == [2, 2]


def test_a_metric_that_takes_no_prediction_is_refused_before_any_run():
    with pytest.raises(TypeError, match=r"must accept \(example, prediction\)"):
        ap.bootstrap_traces(TicketTriage(), make_examples(2), metric=lambda example: 1.0)
    with pytest.raises(TypeError, match="must be a function"):
        ap.Evaluate(devset=make_examples(2), metric="accuracy")
