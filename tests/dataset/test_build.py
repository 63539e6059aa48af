"""Traces -> SFT dataset: what is kept, what is dropped and why, and what a row looks like."""

from __future__ import annotations

import json

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset import build_dataset, load_dataset_dir
from apprentice.formats import ChatFormat, JSONFormat
from apprentice.traces import bootstrap_traces


def _flaky_teacher(signature, inputs):
    """Right on most tickets; unparseable text for 'Urgent' ones, a wrong queue for 'Cheers'."""
    if "category" in signature.output_fields and inputs["ticket"].startswith("Urgent"):
        return "I am not sure what you mean."
    answer = teacher(signature, inputs)
    if "category" in answer and inputs["ticket"].endswith("Cheers"):
        answer = {**answer, "category": "bug" if answer["category"] != "bug" else "billing"}
    return answer


@pytest.fixture
def flaky_store(tmp_path):
    examples = make_examples(80)
    # The same ticket under two more ids: their traces render the same rows, deduplicated.
    plain = next(
        e for e in examples if not e.ticket.startswith("Urgent") and not e.ticket.endswith("Cheers")
    )
    twins = [ap.Example(id=f"twin-{i}", **plain.to_dict()).with_inputs("ticket") for i in range(2)]
    result = bootstrap_traces(
        TicketTriage(),
        [*examples, *twins],
        teacher=ap.ScriptedLM(_flaky_teacher),
        metric=metric,
        store=tmp_path / "traces",
        progress=False,
    )
    return tmp_path / "traces", examples, result


def _expected(examples):
    urgent = sum(e.ticket.startswith("Urgent") for e in examples)
    cheers = sum(
        e.ticket.endswith("Cheers") and not e.ticket.startswith("Urgent") for e in examples
    )
    return urgent, cheers


def test_threshold_drops_low_scores_and_failed_parses_never_become_rows(flaky_store, tmp_path):
    store, examples, _ = flaky_store
    manifest = build_dataset(store, TicketTriage(), tmp_path / "ds", threshold=1.0)
    data, loaded = load_dataset_dir(tmp_path / "ds")
    urgent, cheers = _expected(examples)
    assert urgent > 0 and cheers > 0
    good = len(examples) - urgent - cheers
    # A failed parse fails the program run: the whole trace is dropped, not only its step.
    assert manifest.drops["failed trace"] == urgent
    assert manifest.drops["score below threshold"] == cheers
    assert manifest.drops["duplicate"] == 4  # two steps of each twin
    rows = [*data["train"], *data["validation"]]
    assert len(rows) == 2 * good == manifest.total
    assert loaded.content_hash == manifest.content_hash
    assert all("not sure" not in r["completion"] for r in rows)
    by_predictor = {p: sum(r["predictor"] == p for r in rows) for p in ("classify", "extract")}
    assert by_predictor == {"classify": good, "extract": good}
    assert {
        p: sum(c.get(p, 0) for c in manifest.counts.values()) for p in by_predictor
    } == by_predictor


def test_a_lower_threshold_keeps_half_right_runs_with_the_teachers_answer(flaky_store, tmp_path):
    store, examples, _ = flaky_store
    manifest = build_dataset(store, TicketTriage(), tmp_path / "ds", threshold=0.5)
    _, cheers = _expected(examples)
    assert "score below threshold" not in manifest.drops
    data, _ = load_dataset_dir(tmp_path / "ds")
    tickets = {t.example_id: t.inputs["ticket"] for t in ap.TraceStore(store)}
    wrong = [
        r
        for r in [*data["train"], *data["validation"]]
        if r["predictor"] == "classify"
        and tickets[r["example_id"]].endswith("Cheers")
        and "twin" not in r["example_id"]
    ]
    assert len(wrong) == cheers
    # The row teaches what the teacher said (that is what the trace holds), not the label.
    truth = {e.ticket: e.category for e in examples}
    for r in wrong:
        said = r["completion"].split("[[category]]")[1].split()[0]
        assert said in ("billing", "bug") and said != truth[tickets[r["example_id"]]]


def test_rows_are_the_exact_prompt_the_program_renders_at_inference(flaky_store, tmp_path):
    store, _, _ = flaky_store
    program = TicketTriage()
    build_dataset(store, program, tmp_path / "ds", threshold=1.0)
    data, _ = load_dataset_dir(tmp_path / "ds")
    row = next(r for r in data["train"] if r["predictor"] == "extract")
    trace = next(t for t in ap.TraceStore(store) if t.example_id == row["example_id"])
    step = next(s for s in trace.steps if s.predictor == "extract")
    inputs = {n: step.inputs[n] for n in program.extract.signature.input_fields}
    expected = ChatFormat().render_sft(program.extract.signature, [], inputs, step.output)
    assert row["messages"] == expected.messages and row["completion"] == expected.completion
    # The prompt the teacher saw at run time is the same text.
    assert [m["content"] for m in row["messages"]] == [m["content"] for m in step.messages]


def test_split_keeps_an_examples_steps_together_and_is_deterministic(flaky_store, tmp_path):
    store, _, _ = flaky_store
    a = build_dataset(store, TicketTriage(), tmp_path / "a", threshold=1.0, val_fraction=0.25)
    b = build_dataset(store, TicketTriage(), tmp_path / "b", threshold=1.0, val_fraction=0.25)
    assert a.content_hash == b.content_hash and a.counts == b.counts
    data, _ = load_dataset_dir(tmp_path / "a")
    train_ids = set(data["train"]["example_id"])
    val_ids = set(data["validation"]["example_id"])
    assert train_ids and val_ids and not train_ids & val_ids
    assert 0.1 < len(val_ids) / (len(train_ids) + len(val_ids)) < 0.45


def test_no_validation_split_still_saves_and_loads(flaky_store, tmp_path):
    store, _, _ = flaky_store
    manifest = build_dataset(store, TicketTriage(), tmp_path / "ds", threshold=1.0, val_fraction=0)
    data, _ = load_dataset_dir(tmp_path / "ds")
    assert len(data["validation"]) == 0 and len(data["train"]) == manifest.total


def test_json_format_rows_and_format_recorded(flaky_store, tmp_path):
    store, _, _ = flaky_store
    manifest = build_dataset(store, TicketTriage(), tmp_path / "ds", format=JSONFormat())
    data, _ = load_dataset_dir(tmp_path / "ds")
    assert manifest.format == "json"
    row = next(r for r in data["train"] if r["predictor"] == "extract")
    assert set(json.loads(row["completion"])) == {"order_id"}
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk["format"] == "json" and on_disk["format_version"] == manifest.format_version


def test_clear_errors(tmp_path, flaky_store):
    with pytest.raises(FileNotFoundError, match="run the bootstrap stage"):
        build_dataset(tmp_path / "nothing", TicketTriage(), tmp_path / "ds")
    store, _, _ = flaky_store
    with pytest.raises(ValueError, match="every trace was dropped"):
        build_dataset(store, TicketTriage(), tmp_path / "ds", threshold=1.5)
    with pytest.raises(ValueError, match="val_fraction"):
        build_dataset(store, TicketTriage(), tmp_path / "ds", val_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="not a dataset directory"):
        load_dataset_dir(tmp_path)


def test_the_dataset_does_not_depend_on_the_order_traces_were_stored(flaky_store, tmp_path):
    store, _, _ = flaky_store
    original = ap.TraceStore(store)
    shuffled = ap.TraceStore(tmp_path / "reversed")
    shuffled.open(original.manifest())
    for trace in reversed(list(original)):
        shuffled.append(trace)
    shuffled.close()
    a = build_dataset(original, TicketTriage(), tmp_path / "a", threshold=1.0)
    b = build_dataset(shuffled, TicketTriage(), tmp_path / "b", threshold=1.0)
    assert a.content_hash == b.content_hash and a.drops == b.drops


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs, not even ``except Exception``."""


def _die_after_the_first_split(monkeypatch):
    from datasets import Dataset

    original = Dataset.save_to_disk
    written: list[str] = []

    def save_then_die(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        written.append(str(path))
        raise _Killed(path)

    monkeypatch.setattr(Dataset, "save_to_disk", save_then_die)
    return written


def test_a_rebuild_killed_after_its_first_split_leaves_the_old_dataset_whole(
    flaky_store, tmp_path, monkeypatch
):
    store, _, _ = flaky_store
    out = tmp_path / "ds"
    old = build_dataset(store, TicketTriage(), out, val_fraction=0.1, seed=0)
    written = _die_after_the_first_split(monkeypatch)
    with pytest.raises(_Killed):
        build_dataset(store, TicketTriage(), out, val_fraction=0.5, seed=1)
    assert len(written) == 1  # the new train split was on disk when it died
    data, manifest = load_dataset_dir(out)
    assert manifest.content_hash == old.content_hash
    assert {n: len(data[n]) for n in data} == {
        n: sum(old.counts[n].values()) for n in ("train", "validation")
    }
    train_ids, val_ids = ({r["example_id"] for r in data[n]} for n in ("train", "validation"))
    assert not train_ids & val_ids  # before: the new train split beside the old validation

    monkeypatch.undo()  # the next build clears what the killed one left and switches in
    new = build_dataset(store, TicketTriage(), out, val_fraction=0.5, seed=1)
    _, manifest = load_dataset_dir(out)
    assert manifest.content_hash == new.content_hash != old.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "traces"]
