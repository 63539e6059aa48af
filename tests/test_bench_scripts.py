"""The benchmarks' honesty rules (issue 18, item 20), checked without running a benchmark:
every training contender gets the same torch threads, a busy-box run or too few
repetitions is never reported as a result, and bench_local pins torch's threads."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def scripts(monkeypatch):
    """Imports a benchmark script as a module (they import bench_quiet as a sibling)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module


def record(load_before, load_after, other=None, own_threads=2, cores=2):
    return {
        "load_before": load_before,
        "load_after": load_after,
        "other_cpu_cores": other,
        "wall_s": 10.0,
        "own_threads": own_threads,
        "cores": cores,
    }


# -- the quiet-box rule ------------------------------------------------------------------
def test_a_run_beside_other_work_is_busy_and_a_quiet_one_is_not(scripts):
    quiet = scripts("bench_quiet")
    # The run's own 2 threads account for a load of ~2; a lagging load of 2.3 is quiet.
    assert quiet.busy_reason(record(0.1, 2.3)) is None
    assert quiet.busy_reason(record(0.1, 2.3, other=0.05)) is None
    # Another 2-thread job beside it: load 4.5 is 2.5 beyond its threads, over 1.0 (0.5/core).
    reason = quiet.busy_reason(record(4.5, 4.4))
    assert "4.50" in reason and "2 thread(s)" in reason
    # The load average lags; the CPU others used during the run catches a job just started.
    assert "other processes used 0.80" in quiet.busy_reason(record(0.2, 1.9, other=0.8))
    # A one-thread run (the overhead clients) is allowed less load beyond its own.
    assert quiet.busy_reason(record(2.3, 2.3, own_threads=1)) is not None


def test_busy_runs_and_too_few_repetitions_are_not_a_result(scripts):
    quiet = scripts("bench_quiet")
    calm = record(0.1, 2.0)
    calm["busy"] = None
    busy = record(5.0, 5.5)
    busy["busy"] = quiet.busy_reason(busy)
    assert quiet.problems({"ours": [calm] * 3, "trl-default": [calm] * 3}, reps=3) == []
    found = quiet.problems({"ours": [calm, calm, calm], "trl-default": [calm, busy, calm]}, 3)
    assert len(found) == 1 and found[0].startswith("trl-default, repetition 2: load average")
    assert "at least 3" in quiet.problems({"ours": [calm]}, reps=1)[0]
    assert "NOT A RESULT" in quiet.banner(found)
    assert "NOT A RESULT" not in quiet.banner([])


def test_the_load_probe_records_the_load_around_a_run(scripts):
    quiet = scripts("bench_quiet")
    import time

    with quiet.LoadProbe(own_threads=1) as probe:
        # Our own work, never counted as other processes' CPU. Half a second of it: /proc/stat
        # counts in 10 ms ticks, so over a few milliseconds one tick is "cores" of error.
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            sum(range(1000))
    r = probe.record
    assert set(r) >= {"load_before", "load_after", "other_cpu_cores", "wall_s", "busy"}
    assert r["own_threads"] == 1 and r["wall_s"] > 0
    if r["other_cpu_cores"] is not None:  # Linux
        assert 0.0 <= r["other_cpu_cores"] <= r["cores"] + 0.5


# -- bench_train: the same threads for every contender -----------------------------------
def test_every_training_contender_gets_the_same_fixed_thread_count(scripts):
    bench = scripts("bench_train")
    assert bench.parse_args([]).threads == 2  # fixed, not "auto" idle cores for ours only
    assert bench.parse_args(["--threads", "1"]).threads == 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "0"])
    env = bench.worker_env(2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"


def test_a_worker_that_trained_on_other_threads_stops_the_benchmark(scripts, monkeypatch):
    bench = scripts("bench_train")
    reply = {"name": "trl-default", "threads": 1, "tokens_per_s": 1.0}

    def fake_run(command, **kwargs):
        assert kwargs["env"]["OMP_NUM_THREADS"] == "2"
        return subprocess.CompletedProcess(command, 0, json.dumps(reply) + "\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match="trained on 1 torch threads, not the 2"):
        bench.measure(sys.executable, "trl-default", Path("spec.json"), threads=2)
    reply["threads"] = 2
    result = bench.measure(sys.executable, "trl-default", Path("spec.json"), threads=2)
    assert result["load"]["own_threads"] == 2  # the load around the run is kept with it


def test_a_busy_box_training_ratio_is_flagged_and_not_judged(scripts, capsys):
    bench = scripts("bench_train")
    row = {
        "runs_tokens_per_s": [1000.0],
        "tokens": 100,
        "elapsed_s": 1.0,
        "steps": 2,
        "checkpoints": 0,
        "train_loss": 1.0,
        "trainable_params": 10,
    }
    summary = {
        "trl-default": {**row, "tokens_per_s": 100.0},
        "ours": {**row, "tokens_per_s": 990.0},
    }
    checks = bench.bars(summary)
    busy = record(6.0, 6.0)
    runs = {"ours": [{"load": busy}], "trl-default": [{"load": busy}]}
    found = ["ours, repetition 1: load average 6.00 ..."]
    spec = {"row_tokens": [10, 12], "params": 1000}
    bench.print_report(summary, checks, spec, runs, {}, 2, found)
    out = capsys.readouterr().out
    assert out.count("NOT A RESULT") >= 3  # above, below, and in place of each verdict
    assert "| pass |" not in out
    assert bench.exit_status(checks, found) == 3
    assert bench.exit_status(checks, []) == 0  # 9.9x and 9.9x: both bars pass
    assert bench.exit_status([("x", 0.9, 1.0)], []) == 1


# -- bench_overhead ------------------------------------------------------------------------
def test_overhead_rounds_on_a_busy_box_are_not_a_result(scripts):
    bench = scripts("bench_overhead")
    quiet = scripts("bench_quiet")
    calm = {**record(0.2, 0.9, own_threads=1), "busy": None}
    busy = {**record(3.0, 5.0, own_threads=1), "busy": "load average 5.00 ..."}
    rounds = [{"ours": {"load": calm}, "dspy": {"load": b}} for b in (calm, busy, calm)]
    imports = {"load": calm}
    records = bench.load_records(rounds, imports)
    assert set(records) == {"ours", "dspy", "import apprentice"}
    found = quiet.problems(records, reps=3)
    assert found == ["dspy, repetition 2: load average 5.00 ..."]
    passing = [("bar", "1", True)]
    assert bench.exit_status(passing, found) == 3
    assert bench.exit_status(passing, []) == 0
    assert bench.exit_status([("bar", "1", False)], []) == 1
    assert quiet.problems(bench.load_records(rounds[:2], imports), reps=2)[0].startswith("2 rep")


# -- bench_local: threads pinned, medians ----------------------------------------------------
def test_bench_local_pins_torch_threads_in_every_thread(scripts):
    bench = scripts("bench_local")
    args = bench.parse_args([])
    assert (args.torch_threads, args.rounds, args.warmup_rounds) == (2, 3, 1)
    # In a fresh interpreter (torch reads OMP_NUM_THREADS once, when it loads), the engine's
    # generate thread must see the same count as the main thread.
    code = "import json, bench_local; print(json.dumps(bench_local.pin_threads(1)))"
    env_path = f"{SCRIPTS}:{Path(__file__).resolve().parents[1] / 'src'}"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"main": 1, "fresh": 1}


def test_bench_local_times_vllm_only_when_asked_and_never_merged(scripts, capsys):
    bench = scripts("bench_local")
    assert bench.parse_args([]).backend == "local"
    args = bench.parse_args(["--backend", "vllm", "--student", "smollm2"])
    assert (args.backend, args.merge, args.threads) == ("vllm", False, 64)
    # vLLM serves the adapter as LoRA: a merged comparison would time another thing.
    with pytest.raises(SystemExit) as refused:
        bench.parse_args(["--backend", "vllm", "--merge"])
    assert refused.value.code == 2
    assert "--merge does not apply to --backend vllm" in capsys.readouterr().err
    assert bench.parse_args(["--merge"]).merge  # the local backend still merges
    with pytest.raises(SystemExit):
        bench.parse_args(["--backend", "openai"])


def test_bench_local_reports_a_vllm_mismatch_but_fails_on_a_local_one(scripts, capsys):
    bench = scripts("bench_local")
    outputs = {"batched": ["a", "b", "c"], "one-by-one": ["a", "b", "c"], "vllm": ["a", "x", "c"]}
    differ = bench.differing(outputs)
    assert differ == {"one-by-one": [], "vllm": [1]}
    assert bench.exit_status(differ, [], speedup=12.0, bar=10.0) == 0
    assert bench.exit_status(differ, ["busy"], speedup=12.0, bar=10.0) == 3
    assert bench.exit_status(differ, [], speedup=9.0, bar=10.0) == 1
    local_mismatch = bench.differing({**outputs, "one-by-one": ["a", "b", "z"]})
    assert bench.exit_status(local_mismatch, [], speedup=12.0, bar=10.0) == 1
    assert "FAIL: batched completions differ" in capsys.readouterr().err


def test_bench_local_prints_vllm_against_both_local_modes(scripts, capsys):
    bench = scripts("bench_local")
    args = bench.parse_args(["--backend", "vllm", "--threads", "2", "--runs-per-thread", "1"])
    load = {**record(0.1, 0.2), "busy": None}

    def timed(*seconds):
        return [
            {"seconds": s, "calls": 1, "rows": 2, "tokens": (45, 16), "load": load} for s in seconds
        ]

    rounds = {"batched": timed(2, 1, 3), "one-by-one": timed(20, 20, 20), "vllm": timed(4, 4, 5)}
    outputs = {"batched": ["a", "b"], "one-by-one": ["a", "b"], "vllm": ["a", "x"]}
    warm = dict.fromkeys(rounds, 1)
    differ, speedup = bench.report(args, "header", warm, rounds, outputs, [])
    out = capsys.readouterr().out
    assert speedup == 10.0  # medians: 20 s / 2 s
    assert "| vllm | 2 | 4.00 | 0.5 |" in out
    assert "vllm / batched (runs/s, medians): 0.50x" in out
    assert "vllm / one-by-one (runs/s, medians): 5.00x" in out
    assert "vllm: 1/2 completions identical" in out and "run 1: batched 'b' vs 'x'" in out
    assert "MISMATCH: vLLM" in out and differ["vllm"] == [1]


def test_bench_local_counts_the_vllm_workers_bound_cores_as_its_load(scripts, capsys):
    """setproctitle (as vLLM uses it) hides a child's environment, so the worker's thread
    count is read from the cores it is bound to; checked on a stand-in child process."""
    pytest.importorskip("psutil")
    pytest.importorskip("setproctitle")
    bench = scripts("bench_local")
    code = (
        "import os, setproctitle, sys, time; os.sched_setaffinity(0, {0}); "
        "setproctitle.setproctitle('VLLM::Worker'); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        own = bench.own_load({"batched": None, "vllm": None}, torch_threads=2)
    finally:
        child.kill()
        child.wait()
    assert own["batched"] == (2, ())
    # 1 bound core + the engine core; other children of this process (e.g. a resource
    # tracker an earlier vLLM engine of the session left) may be listed too
    threads, pids = own["vllm"]
    assert threads == 2 and child.pid in pids
    assert "'VLLM::Worker' on cores [0]" in capsys.readouterr().out
