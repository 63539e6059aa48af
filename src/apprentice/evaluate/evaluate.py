"""Evaluate: run a program over a dev set in parallel and score it with a metric."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.example import Example
from apprentice.formats.values import to_jsonable
from apprentice.metric import as_score, bind_metric, check_metric

__all__ = ["Evaluate", "EvaluationError", "EvaluationResult", "ExampleResult"]

log = logging.getLogger(__name__)

# Failures logged one by one per run; the rest go to debug and a one-line summary.
_FAILURES_SHOWN = 5

Metric = Callable[..., Any]


class EvaluationError(RuntimeError):
    """More examples failed than ``max_errors`` allows. ``results``: those finished so far."""

    def __init__(self, message: str, results: list[ExampleResult] | None = None) -> None:
        super().__init__(message)
        self.results = results or []


@dataclass
class ExampleResult:
    index: int
    example: Example
    prediction: Any
    score: float
    error: str | None = None
    # With Evaluate(record_steps=True): the predictor calls of this run and its wall time.
    steps: list[Any] | None = None
    latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        pred = self.prediction
        pred = pred.to_dict() if hasattr(pred, "to_dict") else pred
        return {
            "index": self.index,
            "example": to_jsonable(self.example.to_dict()),
            "prediction": to_jsonable(pred),
            "score": self.score,
            "error": self.error,
        }


@dataclass
class EvaluationResult:
    """``score`` is the mean metric over all examples (failures count as ``failure_score``)."""

    score: float
    results: list[ExampleResult] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.results)

    def __float__(self) -> float:
        return self.score

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(
            json.dumps(
                {
                    "score": self.score,
                    "errors": self.errors,
                    "results": [r.to_dict() for r in self.results],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return path

    def to_csv(self, path: str | Path) -> Path:
        """One row per example: its fields, ``pred_<field>`` per output field, score, error.
        Non-string values are JSON; a prediction that is not a record goes in ``prediction``."""
        path = Path(path)
        rows = [r.to_dict() for r in self.results]
        example_keys = sorted({k for r in rows for k in r["example"]})
        pred_keys = sorted(
            {k for r in rows if isinstance(r["prediction"], dict) for k in r["prediction"]}
        )
        plain = any(
            r["prediction"] is not None and not isinstance(r["prediction"], dict) for r in rows
        )
        header = ["index", *example_keys, *[f"pred_{k}" for k in pred_keys]]
        header += ["prediction"] * plain + ["score", "error"]
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in rows:
                pred = r["prediction"]
                fields = pred if isinstance(pred, dict) else {}
                other = [] if not plain else [_cell(None if isinstance(pred, dict) else pred)]
                writer.writerow(
                    [
                        r["index"],
                        *[_cell(r["example"].get(k)) for k in example_keys],
                        *[_cell(fields.get(k)) for k in pred_keys],
                        *other,
                        r["score"],
                        r["error"] or "",
                    ]
                )
        return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class Evaluate:
    """``Evaluate(devset=..., metric=..., num_threads=8)(program)`` -> EvaluationResult.

    ``metric(example, prediction[, trace])`` returns a number or bool. A failing example
    (the program raised, its reply did not parse, or the metric failed) scores
    ``failure_score`` and is recorded with its error; once more than ``max_errors`` have
    failed the run stops with EvaluationError. Worker threads run in a copy of the
    caller's context, so ``with ap.context(lm=...)`` around the call applies to them.

    ``record_steps=True`` keeps each run's predictor calls (``traces.Step``: prompt, reply,
    tokens, cache hit) and wall time on its ExampleResult, for reports of cost and latency.
    """

    def __init__(
        self,
        *,
        devset: Sequence[Example],
        metric: Metric,
        num_threads: int = 8,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        display_progress: bool = True,
        record_steps: bool = False,
    ) -> None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        if max_errors is not None and (
            isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0
        ):
            raise ValueError(f"max_errors must be None or an integer >= 0, got {max_errors!r}")
        if isinstance(failure_score, bool) or not isinstance(failure_score, (int, float)):
            raise TypeError(f"failure_score must be a number, got {failure_score!r}")
        check_metric(metric)
        self.devset = _checked_devset(devset)
        self.metric = metric
        self.num_threads = num_threads
        self.max_errors = max_errors
        self.failure_score = float(failure_score)
        self.display_progress = display_progress
        self.record_steps = record_steps

    def __call__(
        self, program: Callable[..., Any], *, metric: Metric | None = None
    ) -> EvaluationResult:
        if not callable(program):
            raise TypeError(f"program must be callable (a Module or function), got {program!r}")
        metric = self.metric if metric is None else metric
        check_metric(metric)
        score_of = bind_metric(metric)
        failures = itertools.count()  # next() on a count is atomic: safe across the pool

        def failed(index, example, prediction, exc, stage=""):
            loud = next(failures) < _FAILURES_SHOWN
            return self._failed(index, example, prediction, exc, stage=stage, loud=loud)

        def run_one(index: int) -> ExampleResult:
            example = self.devset[index]
            with self._recording(program) as record:
                try:
                    prediction = program(**example.inputs())
                except Exception as exc:  # one bad example never stops the run
                    return record(failed(index, example, None, exc))
            try:
                score = as_score(score_of(example, prediction, None), index)
            except Exception as exc:
                return record(failed(index, example, prediction, exc, stage="metric "))
            return record(ExampleResult(index, example, prediction, score))

        results = self._run(run_one)
        score = sum(r.score for r in results) / len(results) if results else 0.0
        errors = sum(r.error is not None for r in results)
        log.info("Evaluate: %.4f over %d examples (%d errors)", score, len(results), errors)
        if errors > _FAILURES_SHOWN:
            log.warning(
                "%d of %d examples failed (the first %d are shown above); every error is in "
                "the results (to_csv / to_json)",
                errors,
                len(results),
                _FAILURES_SHOWN,
            )
        return EvaluationResult(score=score, results=results)

    @contextlib.contextmanager
    def _recording(self, program: Callable[..., Any]):
        """Yields ``record(result)``, which files the run's steps and the program's wall time
        (measured to the end of the ``with``, so the metric's time is not in it)."""
        if not self.record_steps:
            yield lambda result: result
            return
        from apprentice.module import Module
        from apprentice.traces.capture import capture

        clock = {"start": time.perf_counter(), "end": None}

        def record(result: ExampleResult) -> ExampleResult:
            end = clock["end"] or time.perf_counter()
            result.steps, result.latency_s = list(steps), end - clock["start"]
            return result

        with capture(program if isinstance(program, Module) else None) as steps:
            try:
                yield record
            finally:
                clock["end"] = time.perf_counter()

    def _failed(
        self,
        index: int,
        example: Example,
        prediction: Any,
        exc: Exception,
        stage: str = "",
        loud: bool = True,
    ) -> ExampleResult:
        error = f"{stage}{type(exc).__name__}: {exc}"
        log.log(logging.WARNING if loud else logging.DEBUG, "example %d failed: %s", index, error)
        log.debug("example %d traceback", index, exc_info=exc)
        return ExampleResult(index, example, prediction, self.failure_score, error)

    def _run(self, run_one: Callable[[int], ExampleResult]) -> list[ExampleResult]:
        """Runs every example on the pool; returns the results in devset order."""
        from apprentice.progress import progress_bar

        budget = _ErrorBudget(self.max_errors)

        def guarded(index: int) -> ExampleResult | None:
            # Workers check the budget before starting, so a run over budget stops at
            # once instead of finishing examples that were already queued.
            if budget.exhausted.is_set():
                return None
            result = run_one(index)
            if result.error is not None:
                budget.spend(result)
            return result

        results: list[ExampleResult | None] = [None] * len(self.devset)
        done_count, errors, total = 0, 0, 0.0
        bar = progress_bar(
            len(self.devset), "Evaluate", enabled=self.display_progress, unit="examples"
        )
        ctx = contextvars.copy_context()
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="evaluate")
        try:
            # Each example runs in its own copy of the caller's context: overrides that
            # one example makes (a nested ap.context) never reach another.
            pending = {pool.submit(ctx.copy().run, guarded, i) for i in range(len(self.devset))}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for result in sorted(
                    (r for r in (f.result() for f in done) if r is not None),
                    key=lambda r: r.index,
                ):
                    results[result.index] = result
                    done_count += 1
                    total += result.score
                    errors += result.error is not None
                    bar.set_postfix(
                        metric=f"{total / done_count:.3f}", errors=errors, refresh=False
                    )
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        finished = [r for r in results if r is not None]
        if budget.exhausted.is_set():
            raise EvaluationError(
                f"{errors} examples failed, more than max_errors={self.max_errors} "
                f"(stopped after {done_count} of {len(self.devset)} examples); "
                f"the error over budget (example {budget.last.index}): {budget.last.error}",
                results=finished,
            )
        return finished


class _ErrorBudget:
    """Counts failures across worker threads; ``exhausted`` is set past ``max_errors``."""

    def __init__(self, max_errors: int | None) -> None:
        self.max_errors = max_errors
        self.failures = 0
        self.last: ExampleResult | None = None
        self.exhausted = threading.Event()
        self._lock = threading.Lock()

    def spend(self, result: ExampleResult) -> None:
        with self._lock:
            self.failures += 1
            if self.max_errors is not None and self.failures > self.max_errors:
                if not self.exhausted.is_set():
                    self.last = result
                self.exhausted.set()


def _checked_devset(devset: Sequence[Example]) -> list[Example]:
    if isinstance(devset, (str, bytes, Example)) or not isinstance(devset, Iterable):
        raise TypeError(f"devset must be a list of ap.Example, got {devset!r}")
    checked = list(devset)
    for i, example in enumerate(checked):
        if not isinstance(example, Example):
            hint = " (wrap it: ap.Example(d).with_inputs(...))" if isinstance(example, dict) else ""
            raise TypeError(
                f"devset[{i}] is {type(example).__name__} {example!r}, expected ap.Example{hint}"
            )
        if example.input_keys is None:
            raise ValueError(
                f"devset[{i}] {example!r} has no input keys; mark them with "
                "ap.Example(...).with_inputs('question', ...)"
            )
    return checked
