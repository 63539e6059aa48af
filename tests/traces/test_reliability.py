"""Bootstrapping under fire: a fifth of teacher calls failing over real HTTP, and SIGKILLs.

The teacher is a real OpenAI-compatible server on loopback (``ticket_server``) whose
faults are decided by a hash of each ticket, so every test knows in advance which
example ids must fail and why. The kill test runs ``bootstrap_driver.py`` in a child
process and SIGKILLs it at random points.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher
from ticket_server import STEPS, Fault, TicketServer, call_fault, fault_for

import apprentice as ap
from apprentice.traces import TraceStore, bootstrap_traces, example_id

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("bootstrap_driver.py")
TIMEOUT_S = 1.0  # generous on a loaded 2-core machine; the slow replies take 1.5 s


def raw_lines(store: Path) -> list[dict]:
    """Every line of the store's JSONL, parsed: fails on a torn or invalid line anywhere."""
    data = (store / "traces.jsonl").read_bytes()
    assert data.endswith(b"\n"), "the store ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def read_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def whole_lines(path: Path) -> int:
    """Bytes up to the last newline: what a kill cannot take back."""
    data = read_bytes(path)
    return data.rfind(b"\n") + 1


def planned_faults(examples):
    return {example_id(e): fault_for(e.ticket) for e in examples}


def test_a_fifth_of_teacher_calls_failing_fails_exactly_those_examples_and_records_why(tmp_path):
    examples = make_examples(500)
    plan = planned_faults(examples)
    kinds = Counter(f.kind for f in plan.values() if f is not None)
    # 197 of the 895 calls made (22%) fail, ending 197 of the 500 examples.
    assert kinds == {"http": 66, "slow": 59, "garbage": 46, "bad_body": 26}

    with TicketServer(slow_s=1.5) as server:
        lm = ap.OpenAILM(
            "teacher",
            base_url=server.url,
            api_key="x",
            max_retries=0,
            timeout=TIMEOUT_S,
            cache=False,
            concurrency=32,
        )
        result = bootstrap_traces(
            TicketTriage(),
            examples,
            teacher=lm,
            metric=metric,
            store=tmp_path / "traces",
            concurrency=32,
            progress=False,
        )
        lm.close()

    failing = {eid for eid, fault in plan.items() if fault is not None}
    assert (result.total, result.ran, result.failed, result.kept) == (500, 500, 197, 303)
    lines = raw_lines(tmp_path / "traces")
    assert sorted(line["example_id"] for line in lines) == sorted(plan)  # one line per example
    traces = {t.example_id: t for t in TraceStore(tmp_path / "traces")}
    assert {eid for eid, t in traces.items() if not t.ok} == failing

    by_id = {example_id(e): e for e in examples}
    for eid, trace in traces.items():
        fault, example = plan[eid], by_id[eid]
        if fault is None:
            assert trace.score == 1.0, trace.error
            assert trace.prediction == {"category": example.category, "order_id": example.order_id}
            continue
        assert trace.score is None and trace.prediction is None
        expected = {
            "http": f"LMUnavailableError: .* failed after 1 attempt\\(s\\): HTTP {fault.status}: "
            "the teacher is overloaded",
            "slow": f"LMUnavailableError: .* timed out after {TIMEOUT_S}s",
            "garbage": "ParseError: could not parse completion \\(chat format\\): missing field",
            "bad_body": "LMUnavailableError: .* malformed reply",
        }[fault.kind]
        assert trace.error is not None
        assert re.match(expected, trace.error), (fault, trace.error)
        # The failing call is the trace's last step, recorded with the same error.
        assert [s.predictor for s in trace.steps] == ["classify", "extract"][
            : 1 + (fault.step == "extract")
        ]
        assert trace.steps[-1].error == trace.error
        assert all(s.error is None for s in trace.steps[:-1])

    # No retries behind the test's back, no call skipped: each call reached the server once.
    calls = Counter()
    for eid, fault in plan.items():
        ticket = by_id[eid].ticket
        calls[ticket, "classify", 0.0] = 1
        if fault is None or fault.step == "extract":
            calls[ticket, "extract", 0.0] = 1
    assert server.requests == calls
    assert result.calls == sum(calls.values()) == 895


def expected_after_retries(ticket: str) -> tuple[str | None, int]:
    """(the recorded error's cause, the attempt recorded) for ``transient=True``, attempts=2.

    HTTP 503s, slow replies and broken bodies heal on the LM's own retry; garbage heals
    on the bootstrap's re-run at temperature 0.7; HTTP 500 never heals. When both
    attempts fail, the first attempt's trace is the one kept.
    """
    faults = [call_fault(ticket, step) for step in STEPS]

    def first_failure(temperature: float) -> Fault | None:
        for f in faults:
            if f and f.status == 500 or f and f.kind == "garbage" and temperature == 0:
                return f
        return None

    first, second = first_failure(0.0), first_failure(0.7)
    if first is None:
        return None, 0
    if second is None:
        return None, 1
    return ("HTTP 500" if first.kind == "http" else "ParseError"), 0


def test_retries_heal_transient_failures_and_only_permanent_ones_are_recorded(tmp_path):
    examples = make_examples(500)
    expected = {example_id(e): expected_after_retries(e.ticket) for e in examples}
    failing = {eid for eid, (cause, _) in expected.items() if cause is not None}
    healed_by_rerun = {eid for eid, (cause, attempt) in expected.items() if attempt == 1}
    assert (len(failing), len(healed_by_rerun)) == (41, 46)

    with TicketServer(slow_s=1.5, transient=True) as server:
        lm = ap.OpenAILM(
            "teacher",
            base_url=server.url,
            api_key="x",
            max_retries=2,
            retry_backoff=0.01,
            timeout=TIMEOUT_S,
            cache=False,
            concurrency=32,
        )
        result = bootstrap_traces(
            TicketTriage(),
            examples,
            teacher=lm,
            metric=metric,
            store=tmp_path / "traces",
            concurrency=32,
            attempts=2,  # a re-run at temperature 0.7 heals the garbage replies
            progress=False,
        )
        lm.close()

    assert (result.ran, result.kept, result.failed, result.retried) == (500, 459, 41, 46)
    assert len(raw_lines(tmp_path / "traces")) == 500
    traces = {t.example_id: t for t in TraceStore(tmp_path / "traces")}
    for eid, trace in traces.items():
        cause, attempt = expected[eid]
        assert trace.attempt == attempt
        if cause is None:
            assert trace.score == 1.0, trace.error
        elif cause == "HTTP 500":
            assert "failed after 3 attempt(s): HTTP 500" in trace.error
        else:
            assert trace.error.startswith("ParseError: ")
    # Each call reached the server once, plus one retry per transient fault, two per HTTP 500.
    for (ticket, step, _), count in server.requests.items():
        fault = call_fault(ticket, step)
        retries = 0 if fault is None or fault.kind == "garbage" else 2 if fault.status == 500 else 1
        assert count == 1 + retries, (fault, count)


def counting_teacher(calls: list[str]):
    def answer(signature, inputs):
        calls.append(inputs["ticket"])
        return teacher(signature, inputs)

    return answer


@pytest.mark.parametrize("keep", ["half", "all but the newline", "one byte"])
def test_a_torn_last_line_is_cut_and_only_its_example_runs_again(tmp_path, keep):
    examples = make_examples(20)
    store = tmp_path / "traces"
    options = {"metric": metric, "store": store, "concurrency": 4, "progress": False}
    # The resumed run must use the same teacher (its code is part of the store's identity);
    # counting_teacher's call log is state, not code, so a fresh one is the same teacher.
    first = bootstrap_traces(
        TicketTriage(), examples, teacher=ap.ScriptedLM(counting_teacher([])), **options
    )
    assert first.kept == 20
    data = (store / "traces.jsonl").read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:]
    torn_id = json.loads(last)["example_id"]
    cut = {"half": len(last) // 2, "all but the newline": len(last) - 1, "one byte": 1}[keep]
    (store / "traces.jsonl").write_bytes(data[: start + cut])  # a crash mid-write

    calls: list[str] = []
    again = bootstrap_traces(
        TicketTriage(), examples, teacher=ap.ScriptedLM(counting_teacher(calls)), **options
    )
    torn_ticket = next(e.ticket for e in examples if example_id(e) == torn_id)
    assert calls == [torn_ticket, torn_ticket]  # its two predictor calls, nothing else
    assert (again.skipped, again.ran, again.kept) == (19, 1, 1)
    lines = raw_lines(store)
    assert sorted(line["example_id"] for line in lines) == sorted(example_id(e) for e in examples)
    assert len(TraceStore(store)) == 20


def test_a_finished_trace_reaches_the_disk_within_the_flush_interval_while_others_run(tmp_path):
    release = threading.Event()

    def answer(signature, inputs):
        if inputs["question"] == "slow":
            release.wait(30)
        return {"answer": "ok"}

    examples = [ap.Example(id=q, question=q).with_inputs("question") for q in ("fast", "slow")]
    store = TraceStore(tmp_path, flush_interval=0.1)
    run = threading.Thread(
        target=bootstrap_traces,
        args=(ap.Predict("question -> answer"), examples),
        kwargs={
            "teacher": ap.ScriptedLM(answer),
            "store": store,
            "concurrency": 2,
            "progress": False,
        },
    )
    run.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b'"fast"' not in read_bytes(
            tmp_path / "traces.jsonl"
        ):
            time.sleep(0.02)
        # A SIGKILL now would keep the fast example's trace: it is on disk, not in a buffer.
        assert [line["example_id"] for line in raw_lines(tmp_path)] == ["fast"]
    finally:
        release.set()
        run.join(10)
    assert [line["example_id"] for line in raw_lines(tmp_path)] == ["fast", "slow"]


def test_sigkill_at_random_points_then_rerun_leaves_one_trace_per_example(tmp_path):
    n, store = 500, tmp_path / "traces"
    ids = {example_id(e) for e in make_examples(n, seed=7)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    command = [sys.executable, str(DRIVER), str(store), str(n), "0.02", "4"]  # ~5 s of work
    rng = random.Random(20240611)
    kept_after_kill: list[bytes] = []  # the whole lines each kill left
    torn_tails = 0
    while len(kept_after_kill) < 7:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", "the driver failed to start"
        # Each kill lands after this run wrote something new, however busy the box is (a
        # fixed sleep let a loaded box kill runs that had not written yet), then at a
        # random point of the writing.
        before = len(kept_after_kill[-1]) if kept_after_kill else 0
        deadline = time.monotonic() + 120
        while whole_lines(store / "traces.jsonl") <= before and proc.poll() is None:
            assert time.monotonic() < deadline, "the driver wrote nothing in 120 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run finished before its kill: lengthen the run"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc.stdout.close()
        data = read_bytes(store / "traces.jsonl")
        torn_tails += bool(data) and not data.endswith(b"\n")
        kept_after_kill.append(data[: data.rfind(b"\n") + 1])

    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout.splitlines()[-1])

    # Nothing written is ever lost or rewritten: what each kill left, byte for byte, is
    # where every later run (and the final file) starts.
    after = [*kept_after_kill, read_bytes(store / "traces.jsonl")]
    assert all(later.startswith(earlier) for earlier, later in zip(after, after[1:], strict=False))
    progressed = sum(
        len(a) < len(b) for a, b in zip([b"", *kept_after_kill], kept_after_kill, strict=False)
    )
    assert progressed == 7, f"only {progressed} of the kills landed after new traces were written"
    done = kept_after_kill[-1].count(b"\n")
    assert 0 < done < n and summary["skipped"] == done
    assert summary["ran"] == n - done and summary["failed"] == 0

    lines = raw_lines(store)  # every line valid JSON, no torn tail
    counts = Counter(line["example_id"] for line in lines)
    assert set(counts) == ids and max(counts.values()) == 1  # exactly one line per example
    assert all(line["score"] == 1.0 and line["error"] is None for line in lines)
    assert len(TraceStore(store)) == n
    print(f"{len(kept_after_kill)} kills, {torn_tails} left a torn tail")
