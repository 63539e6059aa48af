import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.traces import bootstrap_traces


def test_failures_become_failed_traces_and_the_run_goes_on():
    def flaky(sig, inputs):
        if inputs["ticket"].endswith("Cheers") and "order_id" in sig.output_fields:
            raise RuntimeError("teacher fell over")
        return teacher(sig, inputs)

    examples = make_examples(60)
    expected_failures = sum(e.ticket.endswith("Cheers") for e in examples)
    assert 0 < expected_failures < 60
    result = bootstrap_traces(
        TicketTriage(),
        examples,
        teacher=ap.ScriptedLM(flaky),
        metric=metric,
        concurrency=4,
        progress=False,
    )
    assert (result.ran, result.failed, result.kept) == (
        60,
        expected_failures,
        60 - expected_failures,
    )
    failed = [t for t in result.traces if not t.ok]
    assert all("teacher fell over" in t.error for t in failed)
    assert all(len(t.steps) == 2 and t.steps[1].error for t in failed)


def test_attempts_retry_low_scores_at_higher_temperature_with_a_new_rollout():
    seen = []

    def picky(sig, inputs):
        seen.append(1)
        out = teacher(sig, inputs)
        if "category" in out and len(seen) == 1:
            out["category"] = "bug" if out["category"] != "bug" else "billing"  # wrong first
        return out

    lm = ap.ScriptedLM(picky)
    result = bootstrap_traces(
        TicketTriage(),
        make_examples(1),
        teacher=lm,
        metric=metric,
        threshold=1.0,
        attempts=3,
        progress=False,
        concurrency=1,
    )
    trace = result.traces[0]
    assert trace.score == 1.0 and trace.attempt == 1 and result.retried == 1
    assert result.calls == 4
    retry_request = lm.history[-2].request
    assert (retry_request.temperature, retry_request.rollout) == (0.7, 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        bootstrap_traces(TicketTriage(), make_examples(2), concurrency=0)
    with pytest.raises(TypeError, match=r"dataset\[1\] is dict"):
        bootstrap_traces(TicketTriage(), [make_examples(1)[0], {"ticket": "x"}])


def test_the_original_program_is_not_mutated():
    program = TicketTriage()
    bootstrap_traces(program, make_examples(3), teacher=ap.ScriptedLM(teacher), progress=False)
    assert all(p.lm is None for p in program.predictors())
