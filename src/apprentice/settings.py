"""Defaults for LM calls: ``configure(...)`` sets them, ``with context(...)`` overrides them.

There is one process-wide default (what ``configure`` sets) and a contextvar holding
the overrides of the enclosing ``context`` blocks. An override is scoped to the current
thread or asyncio task: overrides made in one never leak into another. A setting that no
``context`` overrides always reads ``configure``'s current value, even one set after the
block was entered. Work that apprentice fans out itself (Evaluate's threads, a module's
async call) copies the caller's context, so overrides follow it there.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.lm.base import LM
    from apprentice.retrieve.retrieve import Retriever

__all__ = ["Settings", "configure", "context", "settings"]

DEFAULT_MAX_BACKTRACKS = 2


@dataclass(frozen=True)
class Settings:
    """What a predictor uses when it has no binding of its own."""

    lm: LM | None = None
    format: Format | None = None
    # The retriever a Retrieve module uses when it has none of its own: any callable
    # (query, k) -> list of passage strings, e.g. ap.BM25Retriever(corpus).
    rm: Retriever | None = None
    # Step observers for trace capture: callables receiving each finished predictor call.
    observers: tuple[Any, ...] = ()
    # How many times a program run is re-run with feedback when an ap.Suggest/ap.Assert
    # fails inside it (apprentice.predict.assertions); 0 turns backtracking off.
    max_backtracks: int = DEFAULT_MAX_BACKTRACKS
    # An OpenTelemetry Tracer: every program run, module, predictor and LM call becomes a
    # span (apprentice.tracing; ap.enable_tracing sets it). None: no spans, no cost.
    tracer: Any = None


_ROOT_LOCK = threading.Lock()
_root = Settings()
_NO_OVERRIDES: MappingProxyType[str, Any] = MappingProxyType({})
_overrides: contextvars.ContextVar[MappingProxyType[str, Any]] = contextvars.ContextVar(
    "apprentice_settings", default=_NO_OVERRIDES
)
_FIELD_NAMES = frozenset(f.name for f in fields(Settings))


def settings() -> Settings:
    """The settings in force here: ``configure``'s, with the enclosing ``context``s on top."""
    overrides = _overrides.get()
    return replace(_root, **overrides) if overrides else _root


def current_tracer() -> Any:
    """``settings().tracer``, read without building the merged Settings: every module call
    reads it, and inside a ``context`` block ``settings()`` costs microseconds."""
    overrides = _overrides.get()
    return overrides.get("tracer", _root.tracer)


def __getattr__(name: str) -> Any:
    # ``ap.settings.lm`` (DSPy's habit) reads the setting in force here.
    if name in _FIELD_NAMES:
        return getattr(settings(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _SettingsModule(types.ModuleType):
    """Refuses ``ap.settings.lm = ...``: it would change nothing a predictor reads."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELD_NAMES:
            raise AttributeError(
                f"settings are read-only: write ap.configure({name}=...) for the process "
                f"default, or `with ap.context({name}=...):` for one block"
            )
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _SettingsModule


def configure(**changes: Any) -> None:
    """Sets process-wide defaults, e.g. ``configure(lm=OpenAILM(...))``."""
    global _root
    changes = _checked(changes)
    with _ROOT_LOCK:
        _root = replace(_root, **changes)


@contextlib.contextmanager
def context(**changes: Any) -> Iterator[Settings]:
    """Overrides settings for the enclosed block, in this thread or task only."""
    changes = _checked(changes)
    token = _overrides.set(MappingProxyType({**_overrides.get(), **changes}))
    try:
        yield settings()
    finally:
        _overrides.reset(token)


def _checked(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - _FIELD_NAMES)
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; known: {sorted(_FIELD_NAMES)}")
    checked = dict(changes)
    lm = changes.get("lm")
    if lm is not None and not callable(getattr(lm, "generate", None)):
        raise TypeError(
            f"lm={lm!r} is not an LM (it has no generate() method); pass an LM object "
            "such as ap.OpenAILM('model-name') or ap.ScriptedLM(fn), or None"
        )
    fmt = changes.get("format")
    if fmt is not None and not all(callable(getattr(fmt, m, None)) for m in ("render", "parse")):
        raise TypeError(
            f"format={fmt!r} is not a Format (it needs render() and parse()); pass e.g. "
            "ap.ChatFormat() or ap.JSONFormat(), or None"
        )
    rm = changes.get("rm")
    if rm is not None and not callable(rm):
        raise TypeError(
            f"rm={rm!r} is not a retriever (it is not callable); pass a callable "
            "(query, k) -> list[str] such as ap.BM25Retriever(corpus), or None"
        )
    _check_backtracks(changes)
    tracer = changes.get("tracer")
    if tracer is not None and not callable(getattr(tracer, "start_as_current_span", None)):
        raise TypeError(
            f"tracer={tracer!r} is not an OpenTelemetry Tracer; use ap.enable_tracing(exporter) "
            "or pass provider.get_tracer(...), or None"
        )
    if "observers" in changes:
        observers = changes["observers"]
        if not isinstance(observers, (list, tuple)):
            raise TypeError(f"observers={observers!r} must be a tuple of callables")
        bad = [o for o in observers if not callable(o)]
        if bad:
            raise TypeError(f"observers must be callables; {bad[0]!r} is not")
        checked["observers"] = tuple(observers)
    return checked


def _check_backtracks(changes: dict[str, Any]) -> None:
    value = changes.get("max_backtracks", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"max_backtracks={value!r} must be an integer >= 0 (0 turns it off)")
