import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.traces import TraceStore, TraceStoreMismatch, bootstrap_traces


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


# -- reusing a store: only traces that the same code would make again ------------------------
def _boot(store, *, teacher_fn=teacher, metric_fn=metric, **options):
    return bootstrap_traces(
        TicketTriage(),
        make_examples(4),
        teacher=ap.ScriptedLM(teacher_fn),
        metric=metric_fn,
        store=store,
        threshold=1.0,
        concurrency=2,
        progress=False,
        **options,
    )


def test_a_fixed_metric_does_not_reuse_the_traces_the_broken_one_scored(tmp_path):
    def broken_metric(example, prediction):
        return prediction.category == "no such category"

    first = _boot(tmp_path, metric_fn=broken_metric)
    assert (first.ran, first.kept, first.low_score) == (4, 0, 4)
    # Before: "skipped 4, ran 0", then "no training rows: check the metric" - the fixed one.
    with pytest.raises(TraceStoreMismatch, match="different metric") as refused:
        _boot(tmp_path)
    assert "reset=True" in str(refused.value)
    again = _boot(tmp_path, reset=True)
    assert (again.skipped, again.ran, again.kept) == (0, 4, 4)


def test_a_fixed_teacher_function_does_not_reuse_the_broken_ones_traces(tmp_path):
    def make_teacher(wrong: bool):
        def scripted(sig, inputs):
            out = teacher(sig, inputs)
            if wrong and "category" in out:
                out["category"] = "bug" if out["category"] != "bug" else "billing"
            return out

        return scripted

    assert _boot(tmp_path, teacher_fn=make_teacher(wrong=True)).kept == 0
    # Same source, another captured value: another teacher.
    with pytest.raises(TraceStoreMismatch, match="different teacher"):
        _boot(tmp_path, teacher_fn=make_teacher(wrong=False))
    # The same teacher, made again, resumes.
    assert _boot(tmp_path, teacher_fn=make_teacher(wrong=True)).skipped == 4


def test_retry_failed_runs_only_the_examples_whose_trace_failed(tmp_path, caplog):
    outage = {"on": True}
    calls = []

    def flaky(sig, inputs):
        calls.append(inputs["ticket"])
        if outage["on"] and inputs["ticket"] in tickets[:2]:
            raise RuntimeError("endpoint down")
        return teacher(sig, inputs)

    tickets = [e.ticket for e in make_examples(4)]
    first = _boot(tmp_path, teacher_fn=flaky)
    assert (first.failed, first.kept) == (2, 2)
    outage["on"] = False
    resumed = _boot(tmp_path, teacher_fn=flaky)
    assert (resumed.skipped, resumed.ran) == (4, 0)
    assert "2 of which failed" in caplog.text and "retry_failed=True" in caplog.text
    before = len(calls)
    retried = _boot(tmp_path, teacher_fn=flaky, retry_failed=True)
    assert (retried.skipped, retried.ran, retried.kept) == (2, 2, 2)
    assert sorted(set(calls[before:])) == sorted(tickets[:2])
    assert all(t.ok for t in TraceStore(tmp_path)) and len(TraceStore(tmp_path)) == 4


def test_a_grown_training_set_adds_traces_for_the_new_examples_only(tmp_path):
    calls: list[str] = []

    def counted(sig, inputs):
        calls.append(inputs["ticket"])
        return teacher(sig, inputs)

    def run(examples):
        return bootstrap_traces(
            TicketTriage(),
            examples,
            teacher=ap.ScriptedLM(counted),  # no cache: every call reaches the teacher
            metric=metric,
            store=tmp_path / "traces",
            progress=False,
        )

    run(make_examples(8))
    assert len(set(calls)) == 8
    calls.clear()
    # Before: TraceStoreMismatch "holds traces for a different dataset".
    grown = run(make_examples(12))
    assert (grown.skipped, grown.ran) == (8, 4)
    assert set(calls) == {e.ticket for e in make_examples(12)[8:]}
    assert len(list(TraceStore(tmp_path / "traces"))) == 12
    assert run(make_examples(12)).ran == 0  # the manifest now records the grown set

    # Fewer examples, or one changed under the same id, is not growth: still refused.
    with pytest.raises(TraceStoreMismatch, match="different dataset"):
        run(make_examples(10))
    changed = make_examples(12)
    changed[0] = ap.Example(changed[0], category="other").with_inputs("ticket")
    with pytest.raises(TraceStoreMismatch, match="different dataset"):
        run(changed)
