"""A short, stable hash of what a piece of user code does, so stored work can tell whether
the code that made it has changed (trace stores, run stages, a scripted LM's identity).

What it covers: the source text of the function or class (``inspect.getsource``), the
values of default arguments, and closure cells that hold plain values (numbers, strings,
tuples of them) or other functions, hashed the same way. What it cannot see: helpers the
code calls by name, globals, and mutable state (a closed-over list or dict counts by its
type only, so a call log that grows does not change the hash). Where there is no source
(builtins, code typed into a REPL) the qualified name stands in for it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

__all__ = ["code_fingerprint"]

_PLAIN = (int, float, str, bytes, bool, type(None))


def code_fingerprint(obj: Any) -> str:
    """16 hex digits that change when ``obj``'s code (or its plain captured values) do."""
    return hashlib.sha256(_describe(obj, depth=0).encode()).hexdigest()[:16]


def _describe(obj: Any, depth: int) -> str:
    if depth > 4:  # a chain of wrappers this deep: its name is enough
        return _name(obj)
    if isinstance(obj, functools.partial):
        args = [_value(a, depth) for a in obj.args]
        keywords = {k: _value(v, depth) for k, v in sorted(obj.keywords.items())}
        return f"partial({_describe(obj.func, depth + 1)}, {args}, {keywords})"
    if inspect.ismethod(obj):
        return f"method({_describe(obj.__func__, depth + 1)}, {_name(type(obj.__self__))})"
    if inspect.isfunction(obj):
        defaults = [_value(v, depth) for v in obj.__defaults__ or ()]
        kwdefaults = {k: _value(v, depth) for k, v in sorted((obj.__kwdefaults__ or {}).items())}
        cells = [_value(_cell(c), depth) for c in obj.__closure__ or ()]
        return f"function({_source(obj)}, {defaults}, {kwdefaults}, {cells})"
    if inspect.isclass(obj):
        return f"class({_source(obj)})"
    if callable(obj):  # an instance with __call__: its class's code
        return f"instance({_source(type(obj))})"
    return _name(obj)


def _value(value: Any, depth: int) -> str:
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value):
        return repr(value)
    if inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial):
        return _describe(value, depth + 1)
    return f"<{_name(type(value))}>"


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (the name is not bound yet)
        return None


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return _name(obj)


def _name(obj: Any) -> str:
    target = obj if inspect.isclass(obj) or callable(obj) else type(obj)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', type(target).__qualname__)}"
