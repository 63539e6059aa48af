"""`apprentice distill` end to end as a user runs it: a subprocess over a run directory,
killed with SIGKILL during the bootstrap and again during training, then resumed (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TRAIN, DEV = 120, 30


def _recipe(tmp_path) -> Path:
    data = yaml.safe_load((ROOT / "recipes/demo/causal.yaml").read_text())
    data["teacher"]["script"] = "counting_teacher:counting_teacher"
    data["data"]["train"]["args"]["n"] = TRAIN
    data["data"]["dev"]["args"]["n"] = DEV
    data["student"]["tiny"].update(hidden_size=64, num_layers=2)
    data["train"].update(epochs=4, save_every=5)
    data["bootstrap"]["concurrency"] = 4
    data["eval"].update(untrained=False, num_threads=8)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _command(recipe, run_dir, log, delay):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]),
        "APPRENTICE_TEST_CALL_LOG": str(log),
        "APPRENTICE_TEST_TEACHER_DELAY": str(delay),
        # The teacher's replies are cached per user, not per run (pipeline.teacher_cache_dir):
        # each run directory gets its own cache here, so the reference run's replies do not
        # answer the interrupted run's calls and the call log counts what each run asked.
        "APPRENTICE_CACHE_DIR": str(Path(run_dir).parent / f"cache-{Path(run_dir).name}"),
    }
    cmd = [sys.executable, "-m", "apprentice.cli", "distill", str(recipe), "--run-dir"]
    return [*cmd, str(run_dir), "-q"], env


def _kill_when(cmd, env, ready, timeout=900):
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _trace_ids(run_dir: Path) -> list[str]:
    ids = []
    for line in _lines(run_dir / "traces" / "traces.jsonl"):
        with contextlib.suppress(json.JSONDecodeError, KeyError):  # a torn last line
            ids.append(json.loads(line)["example_id"])
    return ids


def _trace_tickets(run_dir: Path) -> set[str]:
    tickets = set()
    for line in _lines(run_dir / "traces" / "traces.jsonl"):
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            tickets.add(json.loads(line)["inputs"]["ticket"])
    return tickets


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapters/multitask/adapter/model.safetensors"))


@pytest.mark.slow
def test_killed_distill_resumes_to_the_same_result_without_recalling_the_teacher(tmp_path):
    import torch

    recipe = _recipe(tmp_path)

    # The reference: one uninterrupted run.
    ref_dir, ref_log = tmp_path / "ref", tmp_path / "ref-calls.log"
    cmd, env = _command(recipe, ref_dir, ref_log, 0)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    traces = run_dir / "traces" / "traces.jsonl"

    # 1. Killed during the bootstrap, after some traces were flushed.
    cmd, env = _command(recipe, run_dir, log, 0.05)
    _kill_when(cmd, env, lambda: len(_lines(traces)) >= 30)
    done_before = _trace_tickets(run_dir)
    calls_before = len(_lines(log))
    assert 30 <= len(done_before) < TRAIN

    # 2. Killed during training, after a checkpoint.
    cmd, env = _command(recipe, run_dir, log, 0)
    checkpoint = run_dir / "adapters/multitask/checkpoints/step-10/trainer_state.json"
    _kill_when(cmd, env, checkpoint.exists)
    assert not (run_dir / "adapters/multitask/adapter").exists()

    # 3. Runs to the end.
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train_line = next(line for line in done.stdout.splitlines() if line.startswith("train "))
    assert "resumed" in train_line, done.stdout

    # Exactly one trace per example, nothing lost.
    ids = _trace_ids(run_dir)
    assert len(ids) == len(set(ids)) == TRAIN
    # No teacher call after the first kill was for an example already traced by then.
    later = [line.split("\t", 1)[1] for line in _lines(log)[calls_before:]]
    assert not done_before & set(later)
    # Every bootstrap call for a training ticket happened once, except those in flight at
    # the kill (at most concurrency=4 program runs, 2 calls each).
    traced = _trace_tickets(run_dir)
    train_calls = [t for t in (line.split("\t", 1)[1] for line in _lines(log)) if t in traced]
    assert 2 * TRAIN <= len(train_calls) <= 2 * TRAIN + 8

    # The same final result as the uninterrupted run.
    ref_state = json.loads((ref_dir / "run.json").read_text())["stages"]
    state = json.loads((run_dir / "run.json").read_text())["stages"]
    assert state["dataset"]["summary"]["hash"] == ref_state["dataset"]["summary"]["hash"]
    ref_weights, weights = _weights(ref_dir), _weights(run_dir)
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in weights)
    assert state["eval"]["summary"] == ref_state["eval"]["summary"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "student (trained)" in report and (run_dir / "report" / "loss.png").exists()

    # A fourth run reuses everything and calls the teacher for nothing.
    calls = len(_lines(log))
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_lines(log)) == calls
    stages = ("bootstrap", "dataset", "train", "eval", "report")
    rows = [line.split() for line in again.stdout.splitlines()]
    statuses = {row[0]: row[1] for row in rows if row and row[0] in stages}
    assert statuses == {
        "bootstrap": "ran",
        "dataset": "reused",
        "train": "reused",
        "eval": "reused",
        "report": "ran",
    }
