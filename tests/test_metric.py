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


def test_a_metric_that_raises_is_reported_not_silently_zero_shot(caplog):
    def broken(example, prediction):
        raise KeyError("label")

    optimizer = ap.BootstrapFewShot(broken, max_bootstrapped_demos=2, max_labeled_demos=0)
    with pytest.raises(RuntimeError, match=r"all 4 teacher runs failed.*KeyError: 'label'"):
        optimizer.compile(TicketTriage(), trainset=make_examples(4), teacher=ap.ScriptedLM(teacher))
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 3 and "metric failed: KeyError" in warned[0].getMessage()


def test_bootstrap_logs_its_first_failures_at_warning(caplog, tmp_path):
    def broken(example, prediction):
        raise ValueError("nope")

    result = ap.bootstrap_traces(
        TicketTriage(),
        make_examples(5),
        teacher=ap.ScriptedLM(teacher),
        metric=broken,
        store=tmp_path / "traces",
        progress=False,
    )
    assert result.failed == 5
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 3 and all("ValueError: nope" in m for m in warned)
