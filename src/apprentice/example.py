"""Example (one data point, with its input keys marked) and Prediction (a module's output)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["Completions", "Example", "Prediction"]


class Example:
    """A dict-like record with attribute access. ``with_inputs`` marks which keys are inputs."""

    __slots__ = ("_store", "_input_keys")

    def __init__(self, base: Mapping[str, Any] | Example | None = None, **fields: Any) -> None:
        store: dict[str, Any] = {}
        input_keys: frozenset[str] | None = None
        if isinstance(base, Example):
            store.update(base._store)
            input_keys = base._input_keys
        elif base is not None:
            store.update(base)
        store.update(fields)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_input_keys", input_keys)

    # -- mapping and attribute access --------------------------------------
    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key in _SLOTS:
            raise AttributeError(key)
        try:
            return self._store[key]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no field {key!r}; fields: {list(self._store)}"
            ) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return self._store == other._store and self._input_keys == other._input_keys

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._store.items())
        marks = f", inputs={sorted(self._input_keys)}" if self._input_keys is not None else ""
        return f"{type(self).__name__}({shown}{marks})"

    def __reduce__(self):
        return (
            _rebuild,
            (type(self), self._store, self._input_keys, getattr(self, "_completions", None)),
        )

    def __deepcopy__(self, memo: dict) -> Example:
        import copy

        state = copy.deepcopy((self._store, getattr(self, "_completions", None)), memo)
        return _rebuild(type(self), state[0], self._input_keys, state[1])

    def keys(self) -> list[str]:
        return list(self._store)

    def values(self) -> list[Any]:
        return list(self._store.values())

    def items(self) -> list[tuple[str, Any]]:
        return list(self._store.items())

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._store)

    # -- inputs and labels ------------------------------------------------------
    @property
    def input_keys(self) -> frozenset[str] | None:
        return self._input_keys

    def with_inputs(self, *keys: str) -> Example:
        missing = [k for k in keys if k not in self._store]
        if missing:
            raise KeyError(
                f"with_inputs names {missing} but the example has only {list(self._store)}"
            )
        new = self.copy()
        object.__setattr__(new, "_input_keys", frozenset(keys))
        return new

    def _require_inputs(self) -> frozenset[str]:
        if self._input_keys is None:
            raise ValueError(
                f"{self!r} has no input keys; mark them with example.with_inputs('question', ...)"
            )
        return self._input_keys

    def inputs(self) -> Example:
        keys = self._require_inputs()
        new = type(self)({k: v for k, v in self._store.items() if k in keys})
        object.__setattr__(new, "_input_keys", keys)
        return new

    def labels(self) -> Example:
        keys = self._require_inputs()
        return type(self)({k: v for k, v in self._store.items() if k not in keys})

    def copy(self, **fields: Any) -> Example:
        new = type(self)(self._store, **fields)
        object.__setattr__(new, "_input_keys", self._input_keys)
        return new

    def without(self, *keys: str) -> Example:
        new = type(self)({k: v for k, v in self._store.items() if k not in keys})
        if self._input_keys is not None:
            object.__setattr__(new, "_input_keys", self._input_keys - set(keys))
        return new


_SLOTS = frozenset({"_store", "_input_keys", "_completions", "_rows"})


def _rebuild(cls, store, input_keys, completions):
    new = cls(store)
    object.__setattr__(new, "_input_keys", input_keys)
    if completions is not None:
        object.__setattr__(new, "_completions", completions)
    return new


class Completions:
    """The n completions of one call: ``completions[i]`` is a dict, ``completions.answer`` a list."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        object.__setattr__(self, "_rows", [dict(r) for r in rows])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    def __getattr__(self, key: str) -> list[Any]:
        if key.startswith("__") or key in _SLOTS:
            raise AttributeError(key)
        if self._rows and key not in self._rows[0]:
            raise AttributeError(
                f"completions have no field {key!r}; fields: {list(self._rows[0])}"
            )
        return [r.get(key) for r in self._rows]

    def __repr__(self) -> str:
        return f"Completions({self._rows!r})"

    def __reduce__(self):
        return (Completions, (self._rows,))


class Prediction(Example):
    """A module's output: the fields of its first completion, plus all ``completions``."""

    __slots__ = ("_completions",)

    def __init__(self, base: Mapping[str, Any] | Example | None = None, **fields: Any) -> None:
        super().__init__(base, **fields)
        object.__setattr__(self, "_completions", None)

    @classmethod
    def from_completions(cls, rows: list[Mapping[str, Any]]) -> Prediction:
        if not rows:
            raise ValueError("a Prediction needs at least one completion")
        pred = cls(rows[0])
        object.__setattr__(pred, "_completions", Completions(rows))
        return pred

    @property
    def completions(self) -> Completions:
        return self._completions if self._completions is not None else Completions([self._store])

    def copy(self, **fields: Any) -> Prediction:
        new = super().copy(**fields)
        object.__setattr__(new, "_completions", self._completions)
        return new
