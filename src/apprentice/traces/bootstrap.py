"""Bootstrapping: run the teacher program over a dataset, concurrently, into a trace store.

A failing example (HTTP errors after retries, unparseable replies, a crashing metric)
becomes a failed trace and the run goes on. ``attempts > 1`` re-runs failed and
low-scoring examples at ``retry_temperature`` with a new rollout number, so the LM cache
does not hand back the same answer.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.example import Example
from apprentice.fingerprint import code_fingerprint
from apprentice.formats.values import to_jsonable
from apprentice.lm.base import BaseLM
from apprentice.metric import check_metric
from apprentice.module import Module
from apprentice.settings import settings
from apprentice.traces.capture import Trace, example_id, run_traced
from apprentice.traces.store import StoreManifest, TraceStore

__all__ = [
    "BootstrapResult",
    "bootstrap_traces",
    "dataset_hash",
    "passes",
    "program_hash",
    "teacher_identity",
]

log = logging.getLogger(__name__)

Metric = Callable[..., Any]


@dataclass
class BootstrapResult:
    total: int = 0
    skipped: int = 0  # already in the store from an earlier run
    ran: int = 0
    kept: int = 0
    failed: int = 0
    low_score: int = 0
    retried: int = 0
    calls: int = 0
    # Steps of attempts an Assert/Suggest re-run or BestOfN threw away (in kept traces too).
    rejected_steps: int = 0
    elapsed_s: float = 0.0
    # max_cost_usd was reached: examples were left untraced (a later run traces them).
    stopped_at_cost: bool = False
    traces: list[Trace] | None = field(default=None, repr=False)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "ran": self.ran,
            "kept": self.kept,
            "failed": self.failed,
            "low_score": self.low_score,
            "retried": self.retried,
            "calls": self.calls,
            "rejected_steps": self.rejected_steps,
            "elapsed_s": round(self.elapsed_s, 3),
            "calls_per_s": round(self.calls_per_s, 1),
            "stopped_at_cost": self.stopped_at_cost,
        }


def passes(trace: Trace, threshold: float | None) -> bool:
    """A trace is kept when it ran cleanly and its score passes (truthy without a threshold)."""
    if not trace.ok:
        return False
    if trace.score is None:
        return True
    return trace.score >= threshold if threshold is not None else bool(trace.score)


def program_hash(program: Module) -> str:
    """Hash of the program's predictors (signatures, demos, config) and of the code of its
    own module classes (``forward`` decides the trace too), not of its LM bindings."""
    state = program.dump_state()
    for predictor in state["predictors"].values():
        predictor.pop("lm", None)
    state["code"] = sorted(code_fingerprint(cls) for cls in _user_classes(program))
    # Modules that shape a predictor's inputs without an LM (Retrieve: its k, retriever and
    # corpus) decide the trace as much as a signature does.
    state["modules"] = _module_identities(program)
    payload = json.dumps(state, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _module_identities(program: Module) -> dict[str, Any]:
    """Path -> ``identity()`` of every sub-module that has one (a Retrieve)."""
    found: dict[str, Any] = {}
    todo, seen = [("", program)], set()
    while todo:
        path, module = todo.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if callable(getattr(module, "identity", None)):
            found[path or "self"] = module.identity()
        todo.extend((f"{path}.{name}" if path else name, c) for name, c in module.named_children())
    return found


def _user_classes(program: Module) -> set[type]:
    """The classes of the program and its sub-modules that are not apprentice's own."""
    found: set[type] = set()
    todo, seen = [program], set()
    while todo:
        module = todo.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for cls in type(module).__mro__:
            if issubclass(cls, Module) and not cls.__module__.startswith("apprentice."):
                found.add(cls)
        todo.extend(child for _, child in module.named_children())
    return found


def teacher_identity(program: Module, teacher: BaseLM | Module | None) -> dict[str, Any]:
    """What answers the bootstrap: the teacher LM's ``trace_identity``; for a teacher program
    (or none: the program's own bindings), its hash and each distinct LM's."""
    if isinstance(teacher, BaseLM):
        return teacher.trace_identity()
    runner = _teacher_program(program, teacher)
    lms = {}
    for predictor in runner.predictors():
        lm = predictor.lm or settings().lm
        ident = lm.trace_identity() if isinstance(lm, BaseLM) else {"lm": repr(lm)}
        lms[json.dumps(ident, sort_keys=True, default=str)] = ident
    return {"program": program_hash(runner), "lms": [lms[k] for k in sorted(lms)]}


def dataset_hash(examples: Iterable[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(to_jsonable(example.to_dict()), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _teacher_program(program: Module, teacher: BaseLM | Module | None) -> Module:
    if isinstance(teacher, Module):
        return teacher
    copy = program.deepcopy()
    if teacher is not None:
        copy.set_lm(teacher)
    return copy


def _retry_copy(program: Module, attempt: int, temperature: float) -> Module:
    copy = program.deepcopy()
    for predictor in copy.predictors():
        predictor.update_config(temperature=temperature, rollout=attempt)
    return copy


def bootstrap_traces(
    program: Module,
    dataset: Sequence[Example],
    *,
    teacher: BaseLM | Module | None = None,
    metric: Metric | None = None,
    store: TraceStore | str | Path | None = None,
    concurrency: int = 16,
    attempts: int = 1,
    threshold: float | None = None,
    retry_temperature: float = 0.7,
    example_key: str = "id",
    progress: bool = True,
    reset: bool = False,
    retry_failed: bool = False,
    max_cost_usd: float | None = None,
    spent_usd: float = 0.0,
) -> BootstrapResult:
    """Runs the teacher over ``dataset`` and records one trace per example.

    With a ``store`` the run is resumable: examples already traced there are skipped, as
    long as the store was made by the same program code and predictors, teacher (its code
    too, for a ``ScriptedLM``), dataset and metric; otherwise ``TraceStoreMismatch`` says
    which of them changed, and ``reset=True`` moves the old traces aside and starts over.
    Failed traces are reused like the others unless ``retry_failed=True``, which runs
    those examples again (their new trace supersedes the failed one).
    Without a store, the traces are returned in ``result.traces``.

    ``max_cost_usd``: once ``spent_usd`` (paid before, e.g. by earlier runs) plus what the
    teacher LM has cost in this call reaches it, no new example starts; those in flight
    finish and are stored, and ``result.stopped_at_cost`` is set. The teacher must be an LM
    with a price table, or its spend could not be counted.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    spent = _spend_counter(teacher, max_cost_usd, spent_usd)
    runner = _teacher_program(program, teacher)
    lm_concurrency = getattr(teacher, "concurrency", None)
    if lm_concurrency is not None and lm_concurrency < concurrency:
        log.warning(
            "teacher %r allows %d requests in flight, fewer than concurrency=%d: raise the LM's "
            "concurrency to use them",
            teacher,
            lm_concurrency,
            concurrency,
        )
    if metric is not None:
        check_metric(metric)
    examples = _unique(dataset, example_key)
    result = BootstrapResult(total=len(examples))
    retry_programs = {a: _retry_copy(runner, a, retry_temperature) for a in range(1, attempts)}

    trace_store = TraceStore(store) if isinstance(store, (str, Path)) else store
    done: set[str] = set()
    if trace_store is not None:
        manifest = StoreManifest(
            program_hash(program),
            teacher_identity(program, teacher),
            dataset_hash(e for _, e in examples),
            code_fingerprint(metric) if metric is not None else None,
        )
        grown = not reset and _grown(trace_store, manifest, examples)
        done = trace_store.open(manifest, reset=reset, grown=grown)
        try:
            done -= _report_reuse(trace_store, done, retry_failed)
        except BaseException:
            trace_store.close()
            raise
    else:
        result.traces = []
    todo = [(eid, ex) for eid, ex in examples if eid not in done]
    result.skipped = len(examples) - len(todo)

    def run_one(ex: Example) -> tuple[Trace, int]:
        best = run_traced(runner, ex, metric=metric, example_key=example_key)
        calls = len(best.steps)
        for attempt in range(1, attempts):
            if passes(best, threshold):
                break
            trace = run_traced(
                retry_programs[attempt], ex, metric=metric, example_key=example_key, attempt=attempt
            )
            calls += len(trace.steps)
            if passes(trace, threshold) or _better(trace, best):
                best = trace
        return best, calls

    from apprentice.progress import progress_bar

    bar = progress_bar(len(todo), "Bootstrap", enabled=progress, unit="examples")
    start = time.perf_counter()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bootstrap")
    ctx = contextvars.copy_context()
    try:
        # Finished runs arrive on a queue (O(1) each): ``wait(FIRST_COMPLETED)`` over the
        # pending set would cost O(pending) lock round trips per finished example.
        finished: queue.SimpleQueue = queue.SimpleQueue()
        # The store flushes on append; while no run finishes, this loop flushes for it, so
        # a finished trace waits at most ``flush_interval`` for the disk, as promised.
        lull = (trace_store.flush_interval or None) if trace_store is not None else None
        upcoming = iter(todo)
        in_flight = started = 0
        while True:
            capped = spent is not None and not result.stopped_at_cost and started < len(todo)
            if capped and spent() >= max_cost_usd:
                result.stopped_at_cost = True
                upcoming = iter(())  # the cap is reached: nothing new starts
                log.warning(
                    "bootstrap: the teacher has cost $%.4f, max_cost_usd is $%.4f: no new "
                    "example starts (%d in flight finish)",
                    spent(),
                    max_cost_usd,
                    in_flight,
                )
            while in_flight < concurrency * 2:
                nxt = next(upcoming, None)
                if nxt is None:
                    break
                pool.submit(ctx.copy().run, run_one, nxt[1]).add_done_callback(finished.put)
                in_flight += 1
                started += 1
            if not in_flight:
                break
            try:
                batch = [finished.get(timeout=lull)]
            except queue.Empty:  # nothing finished for a while: put what is buffered on disk
                trace_store.flush()
                continue
            while not finished.empty():
                batch.append(finished.get())
            in_flight -= len(batch)
            for future in batch:
                trace, calls = future.result()  # run_traced never raises for an example
                if trace_store is not None:
                    trace = trace_store.append(trace)  # one it cannot hold comes back failed
                else:
                    result.traces.append(trace)
                _count(result, trace, calls, threshold)
                if not trace.ok and result.failed <= 3:  # a broken teacher or metric shows at once
                    log.warning("bootstrap: example %s failed: %s", trace.example_id, trace.error)
            bar.update(len(batch))
            bar.set_postfix(kept=f"{result.kept}/{result.ran}", failed=result.failed, refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        if trace_store is not None:
            trace_store.close()
    result.elapsed_s = time.perf_counter() - start
    log.info("bootstrap: %s", result.summary())
    return result


def _spend_counter(teacher: Any, cap: float | None, before: float) -> Any:
    """() -> dollars spent so far (``before`` plus the teacher's usage), or None without a
    cap. A cap needs an LM teacher with a price table: otherwise spend reads as $0."""
    if cap is None:
        return None
    if cap <= 0:
        raise ValueError(f"max_cost_usd must be > 0, got {cap!r}")
    usage = getattr(teacher, "usage", None)
    if not isinstance(teacher, BaseLM) or usage is None or usage.price is None:
        raise ValueError(
            "max_cost_usd needs a teacher LM with a price table (teacher.price in a recipe, "
            "price= on the LM): without one its spend cannot be counted"
        )
    return lambda: before + (usage.summary().get("cost_usd") or 0.0)


def _grown(store: TraceStore, manifest: StoreManifest, examples: list[tuple[str, Example]]) -> bool:
    """Whether ``store`` differs from ``manifest`` only in its dataset, and every trace in it
    is of one of ``examples``, unchanged: the training set grew (a larger ``limit``, more
    examples), so its traces are kept and only the new examples run."""
    try:
        existing = store.manifest()
    except ValueError:  # a broken manifest: ``open`` says what is wrong with it
        return False
    if existing is None or existing.dataset_hash == manifest.dataset_hash:
        return False
    if any(
        getattr(existing, name) != getattr(manifest, name)
        for name in ("program_hash", "teacher", "metric")
    ):
        return False
    wanted = {eid: _canonical(to_jsonable(ex.to_dict())) for eid, ex in examples}
    kept = 0
    for trace in store:
        if trace.example is None or wanted.get(trace.example_id) != _canonical(trace.example):
            return False  # a trace of an example that is gone or changed
        kept += 1
    log.info(
        "bootstrap: the training set grew; keeping the %d traces in %s and running the new "
        "examples",
        kept,
        store.path,
    )
    return True


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _report_reuse(store: TraceStore, done: set[str], retry_failed: bool) -> set[str]:
    """Says what an earlier run left in the store; returns the failed ids to run again."""
    if not done:
        return set()
    failed = {t.example_id for t in store if not t.ok and t.example_id in done}
    if failed and not retry_failed:
        log.warning(
            "bootstrap: reusing %d traces from %s, %d of which failed; pass retry_failed=True "
            "to run the failed ones again, or reset=True to start over",
            len(done),
            store.path,
            len(failed),
        )
    else:
        log.info("bootstrap: reusing %d traces from %s", len(done) - len(failed), store.path)
    return failed if retry_failed else set()


def _better(candidate: Trace, best: Trace) -> bool:
    if candidate.ok != best.ok:
        return candidate.ok
    return (candidate.score or 0.0) > (best.score or 0.0)


def _count(result: BootstrapResult, trace: Trace, calls: int, threshold: float | None) -> None:
    result.ran += 1
    result.calls += calls
    result.rejected_steps += sum(step.rejected for step in trace.steps)
    result.retried += trace.attempt > 0
    if passes(trace, threshold):
        result.kept += 1
    elif not trace.ok:
        result.failed += 1
    else:
        result.low_score += 1


def _unique(dataset: Sequence[Example], key: str) -> list[tuple[str, Example]]:
    seen: dict[str, Example] = {}
    for i, example in enumerate(dataset):
        if not isinstance(example, Example):
            raise TypeError(f"dataset[{i}] is {type(example).__name__}, expected ap.Example")
        eid = example_id(example, key)
        if eid in seen:
            if seen[eid] != example:
                raise ValueError(
                    f"dataset[{i}] has id {eid!r} like an earlier, different example; ids must be unique"
                )
            continue
        seen[eid] = example
    if len(seen) < len(dataset):
        log.warning(
            "dataset has %d duplicate examples; each is traced once", len(dataset) - len(seen)
        )
    return list(seen.items())
