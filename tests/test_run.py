"""The run directory: one process at a time, set-aside copies never lost, unique temp files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import apprentice as ap
from apprentice.files import DirectoryBusy, folder_lock
from apprentice.run import Run

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/demo/causal.yaml"
SMALL = ["data.train.args.n=6", "data.dev.args.n=2", "bootstrap.concurrency=2"]


def test_a_second_process_is_refused_while_one_holds_the_run_directory(tmp_path):
    root = tmp_path / "run"
    other = folder_lock(root)  # what another process holds: its own lock on the folder
    other.acquire(timeout=0)
    try:
        with pytest.raises(DirectoryBusy, match="in use by another apprentice process") as busy:
            Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
        assert str(root) in str(busy.value)
        assert not (root / "recipe.yaml").exists()
    finally:
        other.release()

    run = Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
    other.acquire(timeout=0)
    try:
        with pytest.raises(DirectoryBusy):
            run.bootstrap()
        assert not (root / "run.json").exists() and not (root / "traces").exists()
    finally:
        other.release()
    assert run.bootstrap().summary["traces"] == 6
    # The same process may open the directory again once a stage is over.
    assert Run.open(root, progress=False).bootstrap().summary["skipped"] == 6


def test_setting_adapters_aside_twice_keeps_both_older_copies(tmp_path):
    # What the trainer does with another training run's adapter (train/resume.py): two
    # set-asides within one second must not overwrite each other.
    from apprentice.files import set_aside

    adapter = tmp_path / "run" / "adapters" / "multitask"
    for text in ("first", "second"):
        adapter.mkdir(parents=True)
        (adapter / "weights.txt").write_text(text)
        set_aside(adapter, adapter.parent / ".previous")
    kept = sorted(p.read_text() for p in adapter.parent.glob(".previous/*/weights.txt"))
    assert kept == ["first", "second"] and not adapter.exists()


def test_writes_use_their_own_temp_files_and_leave_others_alone(tmp_path):
    # A fixed temp name ("x.tmp") is shared by two writers: one moves the other's
    # half-written file into place. Someone else's temp file must be left alone.
    foreign = tmp_path / "program.json.tmp"
    foreign.write_text("another writer's half-written file")
    ap.Predict("question -> answer").save(tmp_path / "program.json")
    assert foreign.read_text() == "another writer's half-written file"
    assert json.loads((tmp_path / "program.json").read_text())["schema"] == "apprentice.program"

    root = tmp_path / "run"
    root.mkdir()
    (root / "recipe.yaml.tmp").write_text("theirs")
    Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
    assert (root / "recipe.yaml.tmp").read_text() == "theirs"
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp") and p.name[0] == "."]


# -- editing the metric's code (same import path) is noticed ---------------------------------
BROKEN = "def metric(example, prediction):\n    return prediction.category == 'no such'\n"
FIXED = "def metric(example, prediction):\n    return prediction.category == example.category\n"


def _edit_metric(folder: Path, source: str) -> None:
    import sys

    (folder / "edited_metric.py").write_text(source)
    sys.modules.pop("edited_metric", None)


def test_an_edited_metric_is_not_served_the_old_traces(tmp_path, monkeypatch):
    from apprentice.recipe import RecipeError

    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_metric(tmp_path, BROKEN)
    root = tmp_path / "run"
    overrides = [*SMALL, "metric=edited_metric:metric"]
    assert Run.open(RECIPE, overrides=overrides, run_dir=root).bootstrap().summary["passing"] == 0
    _edit_metric(tmp_path, FIXED)
    # Before: the 6 traces scored by the broken metric were reused (skipped 6, ran 0).
    with pytest.raises(RecipeError, match="different metric"):
        Run.open(root, progress=False).bootstrap()


def test_an_edited_metric_rescores_the_eval(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_metric(tmp_path, BROKEN)
    root = tmp_path / "run"
    overrides = [
        *SMALL,
        "metric=edited_metric:metric",
        "eval.untrained=false",
        "eval.num_threads=2",
    ]
    run = Run.open(RECIPE, overrides=overrides, run_dir=root, progress=False)
    run.recipe.make_program().save(root / "program.json")  # an (unbound) "trained" program
    assert run.eval().summary["teacher"] == 0.0
    _edit_metric(tmp_path, FIXED)
    again = Run.open(root, progress=False).eval()
    # Before: "reused", with the broken metric's 0.0 (the key held the import path only).
    assert again.status == "ran" and again.summary["teacher"] == 1.0


# -- the teacher's cache outlives the run directory ------------------------------------------
def _cached(root: Path) -> list[bool]:
    from apprentice.traces import TraceStore

    return [step.cached for trace in TraceStore(root / "traces") for step in trace.steps]


def test_a_new_run_dir_or_reset_traces_does_not_pay_the_teacher_again(tmp_path):
    from apprentice.cli import main

    first = Run.open(RECIPE, overrides=SMALL, run_dir=tmp_path / "a", progress=False)
    first.bootstrap()
    assert _cached(tmp_path / "a") == [False] * 12  # 6 examples, 2 steps each

    # Before: the cache was runs/<name>/cache/, so the advice "use a new --run-dir" paid again.
    Run.open(RECIPE, overrides=SMALL, run_dir=tmp_path / "b", progress=False).bootstrap()
    assert _cached(tmp_path / "b") == [True] * 12
    assert not (tmp_path / "a" / "cache").exists()

    argv = ["bootstrap", str(tmp_path / "a"), "--reset-traces", "-q"]
    assert main(argv) == 0
    assert _cached(tmp_path / "a") == [True] * 12
    assert len(list((tmp_path / "a" / "traces").glob("traces.*.jsonl"))) == 1  # set aside


def test_a_larger_training_set_adds_traces_instead_of_refusing(tmp_path):
    root = tmp_path / "run"
    Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False).bootstrap()
    # Before: "holds traces for a different dataset ... use a new --run-dir".
    grown = Run.open(root, overrides=["data.train.args.n=9"], progress=False).bootstrap()
    assert (grown.summary["skipped"], grown.summary["ran"], grown.summary["traces"]) == (6, 3, 9)
