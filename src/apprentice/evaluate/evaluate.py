"""Evaluate: run a program over a dev set in parallel and score it with a metric."""

from __future__ import annotations

import contextvars
import csv
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.example import Example
from apprentice.formats.values import to_jsonable

__all__ = ["Evaluate", "EvaluationError", "EvaluationResult", "ExampleResult"]

log = logging.getLogger(__name__)

Metric = Callable[..., Any]


class EvaluationError(RuntimeError):
    """More examples failed than ``max_errors`` allows."""


@dataclass
class ExampleResult:
    index: int
    example: Example
    prediction: Any
    score: float
    error: str | None = None

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
        path = Path(path)
        rows = [r.to_dict() for r in self.results]
        example_keys = sorted({k for r in rows for k in r["example"]})
        pred_keys = sorted(
            {k for r in rows if isinstance(r["prediction"], dict) for k in r["prediction"]}
        )
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["index", *example_keys, *[f"pred_{k}" for k in pred_keys], "score", "error"]
            )
            for r in rows:
                pred = r["prediction"] if isinstance(r["prediction"], dict) else {}
                writer.writerow(
                    [
                        r["index"],
                        *[_cell(r["example"].get(k)) for k in example_keys],
                        *[_cell(pred.get(k)) for k in pred_keys],
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

    A failing example (any exception) scores ``failure_score`` and is recorded; once
    more than ``max_errors`` have failed the run stops with EvaluationError.
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
    ) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        for i, example in enumerate(devset):
            if not isinstance(example, Example):
                raise TypeError(f"devset[{i}] is {type(example).__name__}, expected ap.Example")
            example.inputs()  # raises a clear error when with_inputs() was forgotten
        self.devset = list(devset)
        self.metric = metric
        self.num_threads = num_threads
        self.max_errors = max_errors
        self.failure_score = failure_score
        self.display_progress = display_progress

    def __call__(
        self, program: Callable[..., Any], *, metric: Metric | None = None
    ) -> EvaluationResult:
        metric = metric or self.metric
        results: list[ExampleResult | None] = [None] * len(self.devset)
        errors = 0
        lock = threading.Lock()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(self.devset),
            disable=not self.display_progress,
            desc="Evaluate",
            dynamic_ncols=True,
        )
        total = 0.0

        def run_one(index: int) -> ExampleResult:
            example = self.devset[index]
            try:
                prediction = program(**example.inputs())
                score = _as_score(metric(example, prediction, None), index)
                return ExampleResult(index, example, prediction, score)
            except Exception as exc:  # one bad example never stops the run
                log.debug("example %d failed", index, exc_info=True)
                return ExampleResult(
                    index, example, None, self.failure_score, f"{type(exc).__name__}: {exc}"
                )

        ctx = contextvars.copy_context()
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="evaluate")
        try:
            pending = {pool.submit(ctx.copy().run, run_one, i) for i in range(len(self.devset))}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    with lock:
                        results[result.index] = result
                        total += result.score
                        errors += result.error is not None
                    bar.update(1)
                    bar.set_postfix(metric=f"{total / bar.n:.3f}", errors=errors, refresh=False)
                    if self.max_errors is not None and errors > self.max_errors:
                        for f in pending:
                            f.cancel()
                        raise EvaluationError(
                            f"{errors} examples failed, more than max_errors={self.max_errors}; "
                            f"last error: {result.error}"
                        )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        finished = [r for r in results if r is not None]
        score = total / len(finished) if finished else 0.0
        log.info("Evaluate: %.4f over %d examples (%d errors)", score, len(finished), errors)
        return EvaluationResult(score=score, results=finished)


def _as_score(value: Any, index: int) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"metric returned {value!r} for example {index}; return a number or bool"
        ) from None
    if math.isnan(score):
        raise ValueError(f"metric returned NaN for example {index}")
    return score
