import json

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.traces import StoreManifest, Trace, TraceStore, TraceStoreMismatch, bootstrap_traces


def manifest(program="p", teacher_id=None, data="d"):
    return StoreManifest(program, teacher_id or {"model": "t"}, data)


def test_append_flush_and_stream_back(tmp_path):
    store = TraceStore(tmp_path, flush_every=3)
    assert store.open(manifest()) == set()
    for i in range(7):
        store.append(Trace(example_id=str(i), inputs={"q": i}))
    # Two full batches are on disk before close; the last one is flushed by close.
    assert len((tmp_path / "traces.jsonl").read_text().splitlines()) == 6
    store.close()
    assert [t.example_id for t in TraceStore(tmp_path)] == [str(i) for i in range(7)]
    assert len(TraceStore(tmp_path)) == 7


def test_torn_last_line_is_cut_and_not_counted_as_done(tmp_path):
    store = TraceStore(tmp_path)
    store.open(manifest())
    store.append(Trace(example_id="a", inputs={}))
    store.close()
    with open(tmp_path / "traces.jsonl", "ab") as f:
        f.write(b'{"example_id": "b", "inputs": {')  # a crash mid-write
    assert [t.example_id for t in TraceStore(tmp_path)] == ["a"]
    done = TraceStore(tmp_path).open(manifest())
    assert done == {"a"}
    assert (tmp_path / "traces.jsonl").read_bytes().endswith(b"}\n")


def test_latest_trace_per_id_wins(tmp_path):
    store = TraceStore(tmp_path)
    store.open(manifest())
    store.append(Trace(example_id="a", inputs={}, error="boom"))
    store.append(Trace(example_id="b", inputs={}))
    store.append(Trace(example_id="a", inputs={}, score=1.0))
    store.close()
    traces = list(TraceStore(tmp_path))
    assert [(t.example_id, t.score) for t in traces] == [("b", None), ("a", 1.0)]


def test_resuming_with_a_different_program_teacher_or_dataset_is_refused(tmp_path):
    TraceStore(tmp_path).open(manifest())
    with pytest.raises(TraceStoreMismatch, match="different program"):
        TraceStore(tmp_path).open(manifest(program="other"))
    with pytest.raises(TraceStoreMismatch, match="different teacher"):
        TraceStore(tmp_path).open(manifest(teacher_id={"model": "x"}))
    with pytest.raises(TraceStoreMismatch, match="different dataset"):
        TraceStore(tmp_path).open(manifest(data="other"))
    assert TraceStore(tmp_path).open(manifest(data="other"), reset=True) == set()
    assert json.loads((tmp_path / "manifest.json").read_text())["dataset_hash"] == "other"


def test_bootstrap_resumes_without_recalling_the_teacher(tmp_path):
    calls = []

    def counting(sig, inputs):
        calls.append(inputs["ticket"])
        return teacher(sig, inputs)

    examples = make_examples(40)
    first = bootstrap_traces(
        TicketTriage(),
        examples[:25],
        teacher=ap.ScriptedLM(counting),
        metric=metric,
        store=tmp_path,
        progress=False,
    )
    assert (first.ran, first.kept) == (25, 25)
    # Same program, teacher and data: nothing to do.
    again = bootstrap_traces(
        TicketTriage(),
        examples[:25],
        teacher=ap.ScriptedLM(counting),
        metric=metric,
        store=tmp_path,
        progress=False,
    )
    assert (again.skipped, again.ran) == (25, 0)
    assert len(calls) == 50  # two predictor calls per example, first run only
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 25 and len({json.loads(line)["example_id"] for line in lines}) == 25
