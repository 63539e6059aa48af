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


def _aside_ids(folder) -> set[str]:
    return {
        json.loads(line)["example_id"]
        for path in folder.glob("traces.*.jsonl")
        for line in path.read_text().splitlines()
    }


def test_two_resets_in_the_same_second_keep_both_old_stores(tmp_path, monkeypatch):
    import apprentice.traces.store as store_module

    monkeypatch.setattr(store_module.time, "time", lambda: 1_800_000_000.0)
    for i, eid in enumerate(("a", "b", "c")):
        store = TraceStore(tmp_path)
        store.open(manifest(program=str(i)), reset=True)
        store.append(Trace(example_id=eid, inputs={}))
        store.close()
    # Neither moved-aside store overwrote the other: every trace is still on disk.
    assert _aside_ids(tmp_path) == {"a", "b"}
    assert [t.example_id for t in TraceStore(tmp_path)] == ["c"]


def test_lines_that_are_json_but_not_traces_are_skipped_not_fatal(tmp_path, caplog):
    store = TraceStore(tmp_path)
    store.open(manifest())
    store.append(Trace(example_id="a", inputs={}))
    store.close()
    with open(tmp_path / "traces.jsonl", "a") as f:
        f.write('{}\n[1, 2]\n123\n"text"\n{"example_id": 5}\n{"example_id": "x", "colour": 1}\n')
        f.write('{"example_id": "y", "inputs": {}, "steps": [{"predictor": "p"}]}\n')
    store = TraceStore(tmp_path)
    with store:
        assert store.open(manifest()) == {"a"}
        store.append(Trace(example_id="b", inputs={}))
    assert [t.example_id for t in TraceStore(tmp_path)] == ["a", "b"]
    assert len(TraceStore(tmp_path)) == 2
    assert "line 2 is not a trace" in caplog.text


def test_traces_without_a_manifest_are_not_adopted(tmp_path):
    store = TraceStore(tmp_path)
    store.open(manifest(program="theirs"))
    store.append(Trace(example_id="a", inputs={}))
    store.close()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(TraceStoreMismatch, match="no manifest.json") as refused:
        TraceStore(tmp_path).open(manifest(program="ours"))
    assert "reset=True" in str(refused.value)
    store = TraceStore(tmp_path)
    assert store.open(manifest(program="ours"), reset=True) == set()
    store.close()
    assert _aside_ids(tmp_path) == {"a"}


def test_a_manifest_with_an_unknown_key_or_bad_json_is_named(tmp_path):
    store = TraceStore(tmp_path)
    store.open(manifest())
    store.close()
    data = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "colour": "red"}))
    with pytest.raises(TraceStoreMismatch, match=r"unknown key\(s\) \['colour'\]"):
        TraceStore(tmp_path).open(manifest())
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(TraceStoreMismatch, match="not valid JSON"):
        TraceStore(tmp_path).manifest()
    (tmp_path / "manifest.json").write_text("[1]")
    with pytest.raises(TraceStoreMismatch, match="not a trace store manifest"):
        TraceStore(tmp_path).manifest()


def test_a_second_writer_on_one_store_is_refused_until_the_first_closes(tmp_path):
    from apprentice.files import DirectoryBusy

    first = TraceStore(tmp_path)
    first.open(manifest())
    with pytest.raises(DirectoryBusy, match="in use by another apprentice process"):
        TraceStore(tmp_path).open(manifest())
    first.close()
    second = TraceStore(tmp_path)
    assert second.open(manifest()) == set()
    second.close()


def test_a_reply_no_file_can_hold_fails_its_example_alone_and_is_not_cached(tmp_path):
    from apprentice.lm.cache import Cache

    def lone_surrogate_for_one(sig, inputs):
        outputs = teacher(sig, inputs)
        if inputs["ticket"] == examples[2].ticket:
            outputs = {name: f"{value}\ud800" for name, value in outputs.items()}
        return outputs

    examples = make_examples(6)
    cache = Cache(tmp_path / "cache.sqlite")
    for attempt in range(2):  # the second run must not be served the bad reply from the cache
        result = bootstrap_traces(
            TicketTriage(),
            examples,
            teacher=ap.ScriptedLM(lone_surrogate_for_one, cache=cache),
            metric=metric,
            store=tmp_path / "traces",
            progress=False,
            retry_failed=True,
        )
        # Before: UnicodeEncodeError from the store's write ended the whole bootstrap.
        assert (result.ran, result.kept, result.failed) == (
            (6, 5, 1) if attempt == 0 else (1, 0, 1)
        )
    traces = {t.example_id: t for t in TraceStore(tmp_path / "traces")}
    failed = [t for t in traces.values() if not t.ok]
    assert len(traces) == 6 and len(failed) == 1
    assert (
        "not valid Unicode" in failed[0].error and failed[0].inputs["ticket"] == examples[2].ticket
    )
    rows = cache._connect().execute("SELECT value FROM responses").fetchall()
    assert rows and not any("\\ud800" in value or "\ud800" in value for (value,) in rows)


def test_close_releases_the_folder_even_when_the_last_write_hits_a_full_disk(tmp_path):
    import errno
    import io

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    store = TraceStore(tmp_path, flush_every=100, flush_interval=3600)  # held in the buffer
    store.open(manifest())
    store.append(Trace(example_id="a", inputs={"q": 1}))
    store._handle.close()
    store._handle = io.BufferedWriter(FullDisk(store.file, "ab"))  # the disk fills up now
    with pytest.raises(OSError) as full:
        store.close()
    assert full.value.errno == errno.ENOSPC
    # Before: the folder stayed locked, so no later run could open the store until exit.
    again = TraceStore(tmp_path)
    assert again.open(manifest()) == set()  # the lost batch's example simply runs again
    again.append(Trace(example_id="a", inputs={"q": 1}))
    again.close()
    assert [t.example_id for t in TraceStore(tmp_path)] == ["a"]
