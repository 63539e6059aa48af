"""Assert / Suggest: constraints on what a program's LM calls wrote, with backtracking.

Inside ``forward``, after a predictor's call::

    query = self.generate_query(context=context, question=question).query
    ap.Suggest(len(query) <= 60, "Query should be under 60 characters", target=self.generate_query)

When the condition is false, the program run is re-run (at most ``settings().max_backtracks``
times, default 2), and on that re-run the target predictor's call gets two extra inputs:
``past_<field>`` for each output it wrote and ``feedback`` (the message). When no re-run is
left, ``Assert`` raises ``AssertionFailed`` and ``Suggest`` logs a warning and returns False,
so the program goes on with what it has.

How it works: every outermost ``Module`` call runs its ``forward`` as an *attempt*. A failed
constraint raises a ``Backtrack`` signal that unwinds to the outermost call, which starts
the next attempt with the feedback routed to the target's call (the n-th call of that
predictor in the run, so a predictor called once per hop is corrected at the right hop).
Every step of a thrown-away attempt is marked rejected in the trace (``Step.rejected``), so
it never becomes a demo or a training row; the accepted re-run's steps do. BestOfN and
Refine (``best_of_n.py``) use the same attempts.

The target defaults to the predictor called last in the run. ``forward`` must not swallow
the signal: an ``except Exception`` around a constraint catches it too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apprentice.settings import current_tracer, settings
from apprentice.signature import InputField, SignatureError

if TYPE_CHECKING:
    from apprentice.module import Module
    from apprentice.predict.predict import Predict
    from apprentice.signature import Signature

__all__ = ["Assert", "AssertionFailed", "Attempt", "Backtrack", "Suggest"]

log = logging.getLogger(__name__)

FEEDBACK_FIELD = "feedback"
PAST_PREFIX = "past_"

# (attempt, the predictor's call number within that attempt), one per enclosing attempt.
Calls = tuple[tuple["Attempt", int], ...]


class AssertionFailed(AssertionError):
    """An ``ap.Assert`` still failed after every re-run with feedback."""

    def __init__(self, message: str, *, predictor: str | None = None, retries: int = 0) -> None:
        where = f" (on {predictor})" if predictor else ""
        super().__init__(f"{message}{where}; still failing after {retries} re-run(s) with feedback")
        self.message = message
        self.predictor = predictor
        self.retries = retries


class Backtrack(Exception):  # noqa: N818 - a control signal, not an error a user sees
    """Raised by a failed constraint to re-run the program; caught by the outermost call."""

    def __init__(self, kind: str, message: str, predictor: Predict, call: int, outputs: dict):
        super().__init__(f"{kind} failed: {message}")
        self.kind = kind
        self.message = message
        self.predictor = predictor
        self.call = call
        self.outputs = outputs


@dataclass(eq=False)
class Attempt:
    """One try at a program run (or at a BestOfN/Refine module): the calls made in it, the
    feedback its calls get, and, once thrown away, why."""

    label: str = "attempt"
    # (id(predictor), call number) -> (past outputs, message): inputs added to that call.
    feedback: dict[tuple[int, int], tuple[dict[str, Any], str]] = field(default_factory=dict)
    calls: list[tuple[Predict, int]] = field(default_factory=list)
    outputs: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    # Sampling options over the predictors' own (BestOfN: a new rollout and temperature).
    sampling: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None
    culprit: tuple[int, int] | None = None
    culprit_reason: str | None = None
    _counts: dict[int, int] = field(default_factory=dict)

    def start_call(self, predictor: Predict) -> int:
        number = self._counts.get(id(predictor), 0)
        self._counts[id(predictor)] = number + 1
        self.calls.append((predictor, number))
        return number

    def last_call(self, target: Any = None) -> tuple[Predict, int] | None:
        """The latest call of ``target`` (a predictor, or any predictor of a module), or
        the latest call of all when target is None."""
        wanted = None
        if target is not None:
            wanted = {id(p) for p in _predictors_of(target)}
        for predictor, number in reversed(self.calls):
            if wanted is None or id(predictor) in wanted:
                return predictor, number
        return None

    def reject(
        self, reason: str, culprit: tuple[int, int] | None = None, why: str | None = None
    ) -> None:
        self.rejected = reason
        self.culprit, self.culprit_reason = culprit, why

    def rejection_of(self, predictor: Predict, number: int) -> str | None:
        if self.rejected is None:
            return None
        if self.culprit == (id(predictor), number) and self.culprit_reason:
            return self.culprit_reason
        return self.rejected


def _predictors_of(target: Any) -> list[Predict]:
    # Duck-typed: module.py imports this file, so this file does not import module.py.
    if not callable(getattr(target, "predictors", None)):
        raise TypeError(
            f"target={target!r} is not a predictor or module; pass the predictor whose output "
            "the constraint checks, e.g. target=self.generate_query"
        )
    predictors = target.predictors()
    if not predictors:
        raise TypeError(f"target={target!r} holds no predictor to re-run")
    return predictors


_ATTEMPTS: contextvars.ContextVar[tuple[Attempt, ...]] = contextvars.ContextVar(
    "apprentice_attempts", default=()
)
_BACKTRACKER: contextvars.ContextVar[_Backtracker | None] = contextvars.ContextVar(
    "apprentice_backtracker", default=None
)


@contextlib.contextmanager
def attempt_scope(attempt: Attempt) -> Iterator[Attempt]:
    """Runs the enclosed calls as part of ``attempt`` (nested inside any enclosing one)."""
    token = _ATTEMPTS.set((*_ATTEMPTS.get(), attempt))
    try:
        yield attempt
    finally:
        _ATTEMPTS.reset(token)


# -- what Predict calls ----------------------------------------------------------------
def start_call(
    predictor: Predict, signature: type[Signature], inputs: dict[str, Any]
) -> tuple[type[Signature], dict[str, Any], Calls]:
    """Counts this call in every enclosing attempt and adds the feedback routed to it."""
    stack = _ATTEMPTS.get()
    if not stack:
        return signature, inputs, ()
    calls = tuple((attempt, attempt.start_call(predictor)) for attempt in stack)
    feedback = None
    for attempt, number in calls:  # the innermost attempt's feedback wins
        feedback = attempt.feedback.get((id(predictor), number), feedback)
    if feedback is not None:
        signature, inputs = with_feedback(signature, inputs, *feedback)
    return signature, inputs, calls


def sampling_of(calls: Calls) -> dict[str, Any]:
    """The sampling options the enclosing attempts set (the innermost wins)."""
    merged: dict[str, Any] = {}
    for attempt, _ in calls:
        merged.update(attempt.sampling)
    return merged


def finish_call(predictor: Predict, calls: Calls, outputs: dict[str, Any]) -> None:
    for attempt, number in calls:
        attempt.outputs[(id(predictor), number)] = outputs


def rejection(predictor: Any, calls: Calls) -> str | None:
    """Why this call's step was thrown away (its attempt was rejected), or None."""
    for attempt, number in calls:
        reason = attempt.rejection_of(predictor, number)
        if reason is not None:
            return reason
    return None


def with_feedback(
    signature: type[Signature], inputs: dict[str, Any], past: dict[str, Any], message: str
) -> tuple[type[Signature], dict[str, Any]]:
    """The signature and inputs of a retried call: ``past_<output>`` fields and ``feedback``."""
    extended, values = signature, dict(inputs)
    for name, output in signature.output_fields.items():
        past_name = PAST_PREFIX + name
        _free(signature, past_name)
        extended = extended.append(
            past_name,
            InputField(desc=f"your previous {name}, which was rejected"),
            output.annotation,
        )
        values[past_name] = past.get(name)
    _free(signature, FEEDBACK_FIELD)
    extended = extended.append(
        FEEDBACK_FIELD, InputField(desc="why it was rejected: write a new answer that fixes this")
    )
    values[FEEDBACK_FIELD] = message
    return extended, values


def _free(signature: type[Signature], name: str) -> None:
    if name in signature.fields:
        raise SignatureError(
            f"signature {signature.signature_string()!r} already has a field {name!r}, which a "
            "retry with feedback adds; rename that field to use Assert/Suggest on this predictor"
        )


# -- the constraints -----------------------------------------------------------------------
def Assert(condition: Any, message: str, *, target: Any = None, **other: Any) -> bool:  # noqa: N802
    """Must hold: re-runs the program with feedback to ``target``, then raises AssertionFailed."""
    return _check("Assert", condition, message, target, other)


def Suggest(condition: Any, message: str, *, target: Any = None, **other: Any) -> bool:  # noqa: N802
    """Should hold: re-runs the program with feedback to ``target``, then logs and returns False."""
    return _check("Suggest", condition, message, target, other)


def _check(kind: str, condition: Any, message: str, target: Any, other: dict[str, Any]) -> bool:
    if other:
        hint = " (DSPy's target_module is target= here)" if "target_module" in other else ""
        raise TypeError(
            f"{kind}() got unexpected keyword(s) {sorted(other)}{hint}; write "
            f"ap.{kind}(condition, message, target=self.predictor)"
        )
    if condition:
        return True
    if not isinstance(message, str) or not message:
        raise TypeError(f"{kind} needs a message saying what is wrong, got {message!r}")
    backtracker = _BACKTRACKER.get()
    call = backtracker.attempt.last_call(target) if backtracker is not None else None
    if backtracker is not None and call is not None and backtracker.retries_left():
        predictor, number = call
        outputs = backtracker.attempt.outputs.get((id(predictor), number), {})
        raise Backtrack(kind, message, predictor, number, outputs)
    retries = backtracker.retries if backtracker is not None else 0
    name = _name(call[0]) if call is not None else None
    if kind == "Assert":
        raise AssertionFailed(message, predictor=name, retries=retries)
    log.warning(
        "Suggest failed%s after %d re-run(s) with feedback, going on: %s",
        f" on {name}" if name else "",
        retries,
        message,
    )
    return False


def _name(predictor: Predict) -> str:
    return f"{type(predictor).__name__}({predictor.signature.signature_string()!r})"


# -- the outermost call ------------------------------------------------------------------------
class _Backtracker:
    """Runs the outermost module call as attempts until no constraint asks for a re-run."""

    def __init__(self, max_backtracks: int) -> None:
        self.max_backtracks = max_backtracks
        self.retries = 0
        self.attempt = Attempt("backtrack")

    def retries_left(self) -> bool:
        return self.retries < self.max_backtracks

    def next_attempt(self, signal: Backtrack) -> None:
        """Rejects the current attempt and starts the next with the signal's feedback added
        (earlier feedback is kept: a hop fixed on the first re-run stays fixed)."""
        where = (id(signal.predictor), signal.call)
        self.attempt.reject(
            f"re-run after {signal.kind} failed on {_name(signal.predictor)}: {signal.message}",
            culprit=where,
            why=f"{signal.kind} failed: {signal.message}",
        )
        feedback = {**self.attempt.feedback, where: (signal.outputs, signal.message)}
        self.attempt = Attempt("backtrack", feedback=feedback)
        self.retries += 1
        log.info(
            "%s failed, re-run %d with feedback: %s", signal.kind, self.retries, signal.message
        )


def call_module(module: Module, args: tuple, kwargs: dict) -> Any:
    """``module(...)``: plain ``forward`` inside a run; the outermost call backtracks. With
    tracing on (``settings().tracer``), the call is a span (apprentice/tracing.py)."""
    tracer = current_tracer()
    if tracer is not None:
        from apprentice.tracing import module_span, record_outputs

        with module_span(tracer, module, _BACKTRACKER.get() is None, kwargs) as span:
            result = _call_module(module, args, kwargs)
            record_outputs(span, result)
            return result
    return _call_module(module, args, kwargs)


def _call_module(module: Module, args: tuple, kwargs: dict) -> Any:
    if _BACKTRACKER.get() is not None:
        return module.forward(*args, **kwargs)
    backtracker = _Backtracker(settings().max_backtracks)
    token = _BACKTRACKER.set(backtracker)
    outer = _ATTEMPTS.get()
    try:
        while True:
            # Not attempt_scope(): a context manager per call costs more than this whole
            # loop, and every outermost module call (a bare predictor's too) runs it.
            scope = _ATTEMPTS.set((*outer, backtracker.attempt))
            try:
                return module.forward(*args, **kwargs)
            except Backtrack as signal:
                backtracker.next_attempt(signal)
            finally:
                _ATTEMPTS.reset(scope)
    finally:
        _BACKTRACKER.reset(token)


async def acall_module(module: Module, args: tuple, kwargs: dict) -> Any:
    """The async twin of ``call_module``."""
    tracer = current_tracer()
    if tracer is not None:
        from apprentice.tracing import module_span, record_outputs

        with module_span(tracer, module, _BACKTRACKER.get() is None, kwargs) as span:
            result = await _acall_module(module, args, kwargs)
            record_outputs(span, result)
            return result
    return await _acall_module(module, args, kwargs)


async def _acall_module(module: Module, args: tuple, kwargs: dict) -> Any:
    if _BACKTRACKER.get() is not None:
        return await module.aforward(*args, **kwargs)
    backtracker = _Backtracker(settings().max_backtracks)
    token = _BACKTRACKER.set(backtracker)
    outer = _ATTEMPTS.get()
    try:
        while True:
            scope = _ATTEMPTS.set((*outer, backtracker.attempt))
            try:
                return await module.aforward(*args, **kwargs)
            except Backtrack as signal:
                backtracker.next_attempt(signal)
            finally:
                _ATTEMPTS.reset(scope)
    finally:
        _BACKTRACKER.reset(token)
