"""Turning typed field values into prompt text and completion text back into typed values."""

from __future__ import annotations

import enum
import functools
import json
import re
import typing
from typing import Any, Literal

__all__ = ["format_value", "parse_value", "json_schema_hint", "to_jsonable"]


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(annotation)


def _is_str_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,)


def to_jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def format_value(value: Any, annotation: Any = str, *, is_input: bool = True) -> str:
    """Prompt text for one value. Strings stay as they are; inputs of list[str] are
    numbered passages; everything else is compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if (
        is_input
        and isinstance(value, (list, tuple))
        and all(isinstance(v, str) for v in value)
        and (_is_str_list(annotation) or annotation is str)
    ):
        return "\n".join(f"[{i}] {v}" for i, v in enumerate(value, 1)) if value else "(none)"
    return json.dumps(to_jsonable(value), ensure_ascii=False)


_QUOTES = "\"'`"
# A number whose commas separate thousands: groups of exactly three digits.
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def parse_value(text: str, annotation: Any) -> Any:
    """Parses one field's completion text into ``annotation``; raises ValueError saying why."""
    if annotation is str or annotation is Any:
        return text.strip()
    text = text.strip()
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return _parse_literal(text, annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _parse_enum(text, annotation)
    if annotation in (int, float, bool):
        candidate = text.strip(_QUOTES).strip()
        if annotation is not bool and _THOUSANDS.fullmatch(candidate):
            candidate = candidate.replace(",", "")  # "1,234"; "1,2,3" stays and fails
        return _validate(candidate, annotation, text)
    # Containers, pydantic models, unions: JSON first, then the raw string.
    body = _strip_fences(text)
    try:
        loaded = json.loads(body)
    except ValueError:
        loaded = body
    except RecursionError:  # nested deeper than the decoder goes: not a value we can use
        raise ValueError(f"{_short(text)!r} is nested too deeply to parse") from None
    return _validate(loaded, annotation, text)


def _validate(value: Any, annotation: Any, text: str) -> Any:
    from pydantic import ValidationError

    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        options = _literal_options(annotation)
        if error.get("type") == "literal_error" and options:
            # pydantic's message lists every option: 17k characters for 500 labels.
            raise ValueError(_not_one_of(error.get("input"), options)) from None
        problem = _short(error.get("msg", str(exc)), 200)
        raise ValueError(
            f"{_short(text)!r} is not a valid {_short(_type_name(annotation), 100)}: {problem}"
        ) from None


# Up to this many allowed values, an error lists them all; beyond, the closest few.
_LIST_ALL = 12


def _not_one_of(value: Any, options: tuple[Any, ...] | list[Any], kind: str = "") -> str:
    """Why ``value`` is not allowed, short however many options there are: the whole list
    when it is short, else how many there are and the closest matches."""
    shown = _short(str(value))
    suffix = f" ({kind})" if kind else ""
    if len(options) <= _LIST_ALL:
        return f"{shown!r} is not one of {list(options)}{suffix}"
    import difflib

    by_text = {str(o): o for o in options}
    close = difflib.get_close_matches(str(value), list(by_text), n=5, cutoff=0.5)
    if not close:  # case or spacing aside, the nearest by shared prefix
        folded = str(value).lower()
        close = sorted(by_text, key=lambda o: -_common_prefix(o.lower(), folded))[:3]
    return (
        f"{shown!r} is not one of the {len(options)} allowed values{suffix}; "
        f"closest: {[by_text[c] for c in close]}"
    )


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _literal_options(annotation: Any) -> list[Any]:
    """Every value of every Literal inside ``annotation`` (list[Literal[...]], Optional...)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    found: list[Any] = []
    for arg in typing.get_args(annotation):
        found += _literal_options(arg)
    return found


def _parse_literal(text: str, annotation: Any) -> Any:
    allowed = typing.get_args(annotation)
    candidate = text.strip().strip(_QUOTES).strip()
    for option in allowed:
        if candidate == str(option):
            return option
    folded = candidate.lower()
    for option in allowed:
        if folded == str(option).lower():
            return option
    raise ValueError(_not_one_of(candidate, allowed))


def _parse_enum(text: str, annotation: type[enum.Enum]) -> enum.Enum:
    candidate = text.strip().strip(_QUOTES).strip()
    for member in annotation:
        if candidate in (str(member.value), member.name):
            return member
    for member in annotation:
        if candidate.lower() in (str(member.value).lower(), member.name.lower()):
            return member
    raise ValueError(_not_one_of(candidate, [m.value for m in annotation], annotation.__name__))


def _strip_fences(text: str) -> str:
    """The body of a reply that is one fenced block (```lang ... ```), else the reply.
    String operations, not a regex: the regex this replaced backtracked cubically on a
    fence followed by a long run of whitespace."""
    if len(text) < 6 or not (text.startswith("```") and text.endswith("```")):
        return text
    i = 3
    while i < len(text) - 3 and text[i].isascii() and text[i].isalpha():
        i += 1  # the language tag
    return text[i:-3].strip()


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(annotation: Any) -> str:
    from apprentice.signature import type_to_str

    return type_to_str(annotation)


def json_schema_hint(annotation: Any) -> str:
    """A short description of what a non-string field must look like."""
    if annotation is str:
        return ""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of: " + "; ".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of: " + "; ".join(str(m.value) for m in annotation)
    if annotation in (int, float, bool):
        return f"a single {annotation.__name__} value"
    schema = _adapter(annotation).json_schema()
    return "JSON matching the schema " + json.dumps(schema, separators=(",", ":"))
