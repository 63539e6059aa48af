"""Defaults for LM calls: ``configure(...)`` sets them, ``with context(...)`` overrides them.

There is one process-wide default (what ``configure`` sets) and a contextvar holding
overrides. ``context`` is scoped to the current thread or asyncio task: overrides made
in one task never leak into another. Work that apprentice fans out itself (Evaluate's
threads, an LM's batch) copies the caller's context, so overrides follow it there.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.lm.base import LM

__all__ = ["Settings", "configure", "context", "settings"]


@dataclass(frozen=True)
class Settings:
    """What a predictor uses when it has no binding of its own."""

    lm: LM | None = None
    format: Format | None = None
    # Step observers for trace capture: callables receiving each finished predictor call.
    observers: tuple[Any, ...] = ()


_ROOT_LOCK = threading.Lock()
_root = Settings()
_overrides: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "apprentice_settings", default=None
)
_FIELD_NAMES = frozenset(f.name for f in fields(Settings))


def settings() -> Settings:
    """The settings in force here: the innermost ``context`` or else ``configure``'s."""
    current = _overrides.get()
    return _root if current is None else current


def _check(changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - _FIELD_NAMES)
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; known: {sorted(_FIELD_NAMES)}")


def configure(**changes: Any) -> None:
    """Sets process-wide defaults, e.g. ``configure(lm=OpenAILM(...))``."""
    global _root
    _check(changes)
    with _ROOT_LOCK:
        _root = replace(_root, **changes)


@contextlib.contextmanager
def context(**changes: Any) -> Iterator[Settings]:
    """Overrides settings for the enclosed block, in this thread or task only."""
    _check(changes)
    token = _overrides.set(replace(settings(), **changes))
    try:
        yield _overrides.get()
    finally:
        _overrides.reset(token)
