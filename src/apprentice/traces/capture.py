"""Capture: every predictor call inside a program run becomes a Step; the run is a Trace.

Capture rides on the settings' observers, which live in a contextvar: each program run
collects its own steps, whichever thread or asyncio task it runs in, and nested modules
need nothing special.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from apprentice.formats.values import to_jsonable
from apprentice.metric import as_score, bind_metric
from apprentice.predict.assertions import rejection
from apprentice.settings import context, settings

if TYPE_CHECKING:
    from apprentice.example import Example
    from apprentice.module import Module
    from apprentice.predict.predict import StepRecord

__all__ = ["Step", "Trace", "capture", "example_id", "run_traced", "why_not_a_trace"]


@dataclass
class Step:
    """One predictor call: what it was asked, what came back, and from whom."""

    predictor: str
    signature: dict[str, Any]
    demos: list[dict[str, Any]]
    inputs: dict[str, Any]
    messages: list[dict[str, str]]
    completions: list[str]
    outputs: list[dict[str, Any]]
    lm: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None
    # A step of a thrown-away attempt (an Assert/Suggest re-run, a BestOfN attempt that was
    # not chosen): kept in the trace to read, never used as a demo or a training row.
    rejected: bool = False
    rejection: str | None = None

    @property
    def completion(self) -> str | None:
        return self.completions[0] if self.completions else None

    @property
    def output(self) -> dict[str, Any] | None:
        return self.outputs[0] if self.outputs else None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, sharing (not copying) their JSON-safe values."""
        return {name: getattr(self, name) for name in _STEP_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


@dataclass
class Trace:
    """One program run over one example."""

    example_id: str
    inputs: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    prediction: dict[str, Any] | None = None
    score: float | None = None
    error: str | None = None
    attempt: int = 0
    latency_s: float = 0.0
    example: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, sharing (not copying) their JSON-safe values.

        Not ``dataclasses.asdict``: its deep copy cost ~200 us per step, paid for every
        trace the store writes.
        """
        data = {name: getattr(self, name) for name in _TRACE_FIELDS}
        data["steps"] = [s.to_dict() for s in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        data = dict(data)
        data["steps"] = [Step.from_dict(s) for s in data.get("steps", [])]
        return cls(**data)


_STEP_FIELDS = tuple(f.name for f in fields(Step))
_TRACE_FIELDS = tuple(f.name for f in fields(Trace))
_STEP_REQUIRED = frozenset(f.name for f in fields(Step) if f.default is MISSING)
_TRACE_REQUIRED = frozenset(
    f.name for f in fields(Trace) if f.default is MISSING and f.default_factory is MISSING
)


def why_not_a_trace(data: Any) -> str | None:
    """Why ``Trace.from_dict(data)`` would fail on this parsed JSON, or None when it would
    not: what a store line must look like, checked without building the Trace."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if not isinstance(data.get("example_id"), str):
        return f"example_id is {data.get('example_id')!r}, not a string"
    problem = _keys_problem(data, _TRACE_FIELDS, _TRACE_REQUIRED)
    if problem:
        return problem
    steps = data.get("steps", [])
    if not isinstance(steps, list):
        return f"steps is a {type(steps).__name__}, not a list"
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"steps[{i}] is a {type(step).__name__}, not an object"
        problem = _keys_problem(step, _STEP_FIELDS, _STEP_REQUIRED)
        if problem:
            return f"steps[{i}]: {problem}"
    return None


def _keys_problem(data: dict, known: tuple[str, ...], required: frozenset[str]) -> str | None:
    unknown = sorted(set(data) - set(known))
    missing = sorted(required - set(data))
    if unknown:
        return f"unknown key(s) {unknown}"
    if missing:
        return f"missing key(s) {missing}"
    return None


def example_id(example: Example, key: str = "id") -> str:
    """The example's own ``id`` field when it has one, else a hash of its content."""
    if key in example and example[key] is not None:
        return str(example[key])
    payload = json.dumps(to_jsonable(example.to_dict()), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _step_from_record(record: StepRecord, paths: dict[int, str]) -> Step:
    return Step(
        predictor=paths.get(id(record.predictor), type(record.predictor).__name__),
        signature=record.signature.to_dict(),
        demos=to_jsonable(record.demos),
        inputs=to_jsonable(record.inputs),
        messages=record.messages,
        completions=record.completions,
        outputs=to_jsonable(record.outputs),
        lm=record.lm_identity,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        latency_s=record.latency_s,
        cached=record.cached,
        error=None if record.error is None else f"{type(record.error).__name__}: {record.error}",
    )


@contextlib.contextmanager
def capture(program: Module | None = None) -> Iterator[list[Step]]:
    """Collects the steps of the enclosed calls: ``with capture(program) as steps: program(...)``.

    Paths are the predictors' dotted paths within ``program``. Steps of attempts that were
    thrown away (Assert/Suggest re-runs, BestOfN) are marked ``rejected`` when the block ends.
    """
    paths = {id(p): path for path, p in program.named_predictors()} if program is not None else {}
    steps: list[Step] = []
    in_attempts: list[tuple[Step, Any, Any]] = []

    def observe(record: StepRecord) -> None:
        step = _step_from_record(record, paths)
        steps.append(step)
        calls = record.extra.get("calls")
        if calls:
            in_attempts.append((step, record.predictor, calls))

    try:
        with context(observers=(*settings().observers, observe)):
            yield steps
    finally:
        for step, predictor, calls in in_attempts:
            reason = rejection(predictor, calls)
            if reason is not None:
                step.rejected, step.rejection = True, reason


Metric = Callable[..., Any]


def run_traced(
    program: Module,
    example: Example,
    *,
    metric: Metric | None = None,
    example_key: str = "id",
    attempt: int = 0,
) -> Trace:
    """Runs ``program`` on one example and returns its Trace; never raises for a bad example."""
    inputs = example.inputs().to_dict()
    trace = Trace(
        example_id=example_id(example, example_key),
        inputs=to_jsonable(inputs),
        attempt=attempt,
        example=to_jsonable(example.to_dict()),
    )
    start = time.perf_counter()
    with capture(program) as steps:
        try:
            prediction = program(**inputs)
        except Exception as exc:  # one bad example never stops a run
            trace.error = f"{type(exc).__name__}: {exc}"
            prediction = None
    trace.steps = steps
    trace.latency_s = time.perf_counter() - start
    if prediction is not None:
        trace.prediction = to_jsonable(
            prediction.to_dict() if hasattr(prediction, "to_dict") else prediction
        )
        if metric is not None:
            try:
                score = bind_metric(metric)(example, prediction, trace)
                trace.score = as_score(score, trace.example_id)
            except Exception as exc:
                trace.error = f"metric failed: {type(exc).__name__}: {exc}"
    return trace
