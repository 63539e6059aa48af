"""Signatures: the typed input/output contract of one LM call.

A signature is a class (the form users already know)::

    class GenerateAnswer(Signature):
        \"\"\"Answer questions with short factoid answers.\"\"\"
        question: str = InputField()
        answer: str = OutputField(desc="often between 1 and 5 words")

or a string, ``"context: list[str], question -> answer"``. Signature classes are
immutable values: equal when their instructions and fields are equal, and every helper
(``append``, ``prepend``, ``with_instructions``, ...) returns a new class.
"""

from __future__ import annotations

import ast
import enum
import inspect
import keyword
import typing
from dataclasses import dataclass, replace
from typing import Any, Literal

from apprentice.example import Example, Prediction

__all__ = [
    "Field",
    "InputField",
    "OutputField",
    "Signature",
    "SignatureError",
    "ensure_signature",
    "make_signature",
    "type_to_str",
]


class SignatureError(ValueError):
    """A signature string or class that cannot be understood."""


@dataclass(frozen=True)
class Field:
    """One field of a signature. ``name`` and ``annotation`` are filled in by the signature."""

    kind: Literal["input", "output"]
    desc: str = ""
    prefix: str | None = None
    name: str = ""
    annotation: Any = str

    @property
    def is_input(self) -> bool:
        return self.kind == "input"

    def type_str(self) -> str:
        """The type as a prompt shows it. A Literal shows as its values' type: the format
        lists the allowed values once, after it (500 labels written twice made a 17k
        character prompt)."""
        return type_to_str(self.annotation, literals=False)


def InputField(*, desc: str = "", prefix: str | None = None) -> Any:  # noqa: N802
    """Declares an input field. ``desc`` is shown to the model."""
    return Field("input", desc=desc, prefix=prefix)


def OutputField(*, desc: str = "", prefix: str | None = None) -> Any:  # noqa: N802
    """Declares an output field. ``desc`` is shown to the model."""
    return Field("output", desc=desc, prefix=prefix)


class SignatureMeta(type):
    """Collects fields at class creation and makes the class an immutable value."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "_fields", {}) or {})
        annotations = namespace.get("__annotations__", {})
        for field_name, value in list(namespace.items()):
            if isinstance(value, Field) and field_name not in annotations:
                annotations = {**annotations, field_name: str}
        for field_name, annotation in annotations.items():
            value = namespace.get(field_name)
            if not isinstance(value, Field):
                if field_name.startswith("_"):
                    continue
                raise SignatureError(
                    f"field {field_name!r} of signature {name} has no InputField() or OutputField(); "
                    f"write `{field_name}: ... = InputField()` or `= OutputField()`"
                )
            annotation = _resolve_annotation(annotation, cls)
            _check_name(field_name)
            fields[field_name] = replace(value, name=field_name, annotation=annotation)
        for field_name in fields:
            if field_name in namespace and isinstance(namespace[field_name], Field):
                type.__delattr__(cls, field_name)
        ordered = {k: v for k, v in fields.items() if v.is_input}
        ordered.update({k: v for k, v in fields.items() if not v.is_input})
        type.__setattr__(cls, "_fields", ordered)
        doc = namespace.get("__doc__") if bases else ""
        if doc is None:
            doc = next((getattr(b, "_instructions", "") for b in bases), "")
        type.__setattr__(cls, "_instructions", inspect.cleandoc(doc) if doc else "")
        return cls

    def __call__(cls, spec: Any = None, instructions: str | None = None, **options: Any):
        """``Signature("question -> answer", "Answer briefly.")`` builds a signature class
        (DSPy's habit), the same as ``make_signature``. Signatures are classes, never
        instances, so any other call is refused with what to write instead."""
        if cls is Signature and isinstance(spec, str):
            unknown = sorted(set(options) - {"custom_types", "name"})
            if unknown:
                raise TypeError(
                    f"Signature() got unexpected keyword(s) {unknown}; it takes the spec, "
                    "instructions, custom_types= and name="
                )
            return make_signature(spec, instructions, **options)
        if cls is Signature and isinstance(spec, dict):
            raise TypeError(
                "Signature(dict) is not supported: write a class with InputField/OutputField "
                "attributes, or a string such as Signature('question -> answer', 'instructions')"
            )
        raise TypeError(
            f"{cls.__name__} is a signature class and is not instantiated; pass the class "
            f"itself (ap.Predict({cls.__name__})), or build a new one with "
            "ap.Signature('question -> answer', 'instructions')"
        )

    def __setattr__(cls, name, value):
        raise AttributeError(
            f"signature {cls.__name__} is immutable; derive a new one with "
            "with_instructions(), append(), prepend() or delete()"
        )

    def __eq__(cls, other) -> bool:
        if not isinstance(other, SignatureMeta):
            return NotImplemented
        return cls._key() == other._key()

    def __hash__(cls) -> int:
        return hash(cls._key())

    def __repr__(cls) -> str:
        return f"Signature({cls.signature_string()!r})"

    # -- read-only views -------------------------------------------------
    @property
    def fields(cls) -> dict[str, Field]:
        return dict(cls._fields)

    @property
    def input_fields(cls) -> dict[str, Field]:
        return {k: v for k, v in cls._fields.items() if v.is_input}

    @property
    def output_fields(cls) -> dict[str, Field]:
        return {k: v for k, v in cls._fields.items() if not v.is_input}

    @property
    def instructions(cls) -> str:
        return cls._instructions or _default_instructions(cls)


class Signature(metaclass=SignatureMeta):
    """Base class of every signature. Subclass it with annotated Input/Output fields."""

    # -- derivation helpers (each returns a new signature class) ----------
    @classmethod
    def _key(cls) -> tuple:
        return (
            cls._instructions,
            tuple(
                (f.name, f.kind, f.desc, f.prefix, type_to_str(f.annotation))
                for f in cls._fields.values()
            ),
        )

    @classmethod
    def signature_string(cls) -> str:
        def part(fields: dict[str, Field]) -> str:
            return ", ".join(
                n if f.annotation is str else f"{n}: {type_to_str(f.annotation)}"
                for n, f in fields.items()
            )

        return f"{part(cls.input_fields)} -> {part(cls.output_fields)}"

    @classmethod
    def _derive(cls, fields: dict[str, Field], instructions: str | None = None) -> type[Signature]:
        namespace: dict[str, Any] = {
            "__doc__": cls._instructions if instructions is None else instructions,
            "__annotations__": {n: f.annotation for n, f in fields.items()},
            "__module__": cls.__module__,
        }
        namespace.update(fields)
        return SignatureMeta(cls.__name__, (Signature,), namespace)

    @classmethod
    def with_instructions(cls, instructions: str) -> type[Signature]:
        return cls._derive(cls._fields, instructions)

    @classmethod
    def with_field_desc(cls, name: str, desc: str) -> type[Signature]:
        cls._require(name)
        fields = dict(cls._fields)
        fields[name] = replace(fields[name], desc=desc)
        return cls._derive(fields)

    @classmethod
    def insert(cls, index: int, name: str, field: Field, annotation: Any = str) -> type[Signature]:
        """Inserts ``field`` at ``index`` among the fields of its own kind (inputs or outputs)."""
        if not isinstance(field, Field):
            raise SignatureError(
                f"expected InputField() or OutputField() for {name!r}, got {field!r}"
            )
        _check_name(name)
        if name in cls._fields:
            raise SignatureError(f"signature {cls.__name__} already has a field {name!r}")
        same = [f for f in cls._fields.values() if f.kind == field.kind]
        other = [f for f in cls._fields.values() if f.kind != field.kind]
        if index < 0:
            index = len(same) + index + 1
        same.insert(index, replace(field, name=name, annotation=annotation))
        ordered = same + other if field.kind == "input" else other + same
        return cls._derive({f.name: f for f in ordered})

    @classmethod
    def prepend(cls, name: str, field: Field, annotation: Any = str) -> type[Signature]:
        return cls.insert(0, name, field, annotation)

    @classmethod
    def append(cls, name: str, field: Field, annotation: Any = str) -> type[Signature]:
        return cls.insert(-1, name, field, annotation)

    @classmethod
    def delete(cls, name: str) -> type[Signature]:
        cls._require(name)
        return cls._derive({n: f for n, f in cls._fields.items() if n != name})

    @classmethod
    def _require(cls, name: str) -> None:
        if name not in cls._fields:
            raise SignatureError(
                f"signature {cls.__name__} has no field {name!r}; fields: {list(cls._fields)}"
            )

    @classmethod
    def to_dict(cls) -> dict[str, Any]:
        """A JSON-safe description (used by Module.save)."""
        return {
            "instructions": cls._instructions,
            "fields": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "desc": f.desc,
                    "prefix": f.prefix,
                    "type": type_to_str(f.annotation),
                }
                for f in cls._fields.values()
            ],
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], custom_types: dict[str, Any] | None = None
    ) -> type[Signature]:
        fields = {}
        for spec in data["fields"]:
            annotation = _parse_type(spec.get("type", "str"), custom_types or {})
            maker = InputField if spec["kind"] == "input" else OutputField
            fields[spec["name"]] = replace(
                maker(desc=spec.get("desc", ""), prefix=spec.get("prefix")),
                name=spec["name"],
                annotation=annotation,
            )
        return Signature._derive.__func__(cls, fields, data.get("instructions", ""))


# -- string form ------------------------------------------------------------


def make_signature(
    spec: str,
    instructions: str | None = None,
    custom_types: dict[str, Any] | None = None,
    name: str = "StringSignature",
) -> type[Signature]:
    """Builds a signature from ``"a, b: int -> c: list[str]"``."""
    if not isinstance(spec, str):
        raise SignatureError(f"signature must be a string or a Signature class, got {spec!r}")
    if spec.count("->") != 1:
        raise SignatureError(
            f"signature string {spec!r} must contain exactly one '->' between inputs and outputs, "
            "e.g. 'question -> answer'"
        )
    left, right = spec.split("->")
    inputs = _parse_field_list(left, spec, "input", custom_types or {})
    outputs = _parse_field_list(right, spec, "output", custom_types or {})
    if not outputs:
        raise SignatureError(f"signature string {spec!r} has no output field after '->'")
    seen: set[str] = set()
    for field_name, _ in inputs + outputs:
        if field_name in seen:
            raise SignatureError(f"signature string {spec!r} names field {field_name!r} twice")
        seen.add(field_name)
    namespace: dict[str, Any] = {"__doc__": instructions or "", "__annotations__": {}}
    for field_name, annotation in inputs:
        namespace["__annotations__"][field_name] = annotation
        namespace[field_name] = InputField()
    for field_name, annotation in outputs:
        namespace["__annotations__"][field_name] = annotation
        namespace[field_name] = OutputField()
    return SignatureMeta(name, (Signature,), namespace)


def ensure_signature(signature: str | type[Signature]) -> type[Signature]:
    if isinstance(signature, str):
        return make_signature(signature)
    if isinstance(signature, type) and issubclass(signature, Signature):
        return signature
    raise SignatureError(f"expected a signature string or Signature class, got {signature!r}")


def _parse_field_list(
    text: str, spec: str, kind: str, custom: dict[str, Any]
) -> list[tuple[str, Any]]:
    text = text.strip()
    if not text:
        return []
    parts = _split_top_level(text)
    result = []
    for part in parts:
        part = part.strip()
        if not part:
            raise SignatureError(
                f"signature string {spec!r} has an empty {kind} field (stray comma?)"
            )
        if ":" in part:
            field_name, type_text = (s.strip() for s in part.split(":", 1))
            annotation = _parse_type(type_text, custom)
        else:
            field_name, annotation = part, str
        _check_name(field_name, spec)
        result.append((field_name, annotation))
    return result


def _split_top_level(text: str) -> list[str]:
    """Splits on commas that are not inside brackets (``list[str], b``)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


# Names a field cannot take: reading ``prediction.labels`` must give the field, not the
# method, and ``predictor(config=...)`` is a call option, not an input.
_CALL_OPTIONS = {"config": "per-call settings", "demos": "per-call demos", "lm": "the LM to use"}
_RESERVED: dict[str, str] = {
    **{
        name: f"a method of {cls.__name__}"
        for cls in (Example, Prediction)
        for name in dir(cls)
        if not name.startswith("_")
    },
    **{name: f"a predictor call option ({why})" for name, why in _CALL_OPTIONS.items()},
}


def _check_name(field_name: str, spec: str | None = None) -> None:
    where = f" in signature string {spec!r}" if spec else ""
    if not field_name.isidentifier() or keyword.iskeyword(field_name):
        raise SignatureError(
            f"field name {field_name!r}{where} is not a valid Python identifier; "
            "use letters, digits and underscores"
        )
    if field_name in _RESERVED:
        raise SignatureError(
            f"field name {field_name!r}{where} is {_RESERVED[field_name]}, so the field "
            f"could not be read or passed; rename it (e.g. {field_name + '_'!r})"
        )


_TYPE_NAMES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "Any": Any,
    "Optional": typing.Optional,
    "Union": typing.Union,
    "Literal": Literal,
    "List": list,
    "Dict": dict,
    "Tuple": tuple,
    "None": type(None),
}


def _parse_type(text: str, custom: dict[str, Any]) -> Any:
    """Evaluates a type expression safely: only names from a fixed table and ``custom``."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise SignatureError(f"type {text!r} is not a valid type expression") from None
    names = {**_TYPE_NAMES, **custom}

    def build(n: ast.AST) -> Any:
        if isinstance(n, ast.Name):
            if n.id not in names:
                raise SignatureError(
                    f"unknown type {n.id!r} in {text!r}; known: {sorted(names)} "
                    "(pass custom_types= for your own classes)"
                )
            return names[n.id]
        if isinstance(n, ast.Attribute):
            dotted = ast.unparse(n)
            if dotted in names:
                return names[dotted]
            raise SignatureError(f"unknown type {dotted!r} in {text!r}; pass custom_types=")
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Subscript):
            origin = build(n.value)
            args = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
            built = tuple(build(a) for a in args)
            if origin is Literal:
                return Literal[built]
            if origin in (typing.Optional, typing.Union) or origin in (list, dict, tuple):
                return origin[built if len(built) > 1 else built[0]]
            raise SignatureError(f"type {ast.unparse(n.value)!r} in {text!r} takes no parameters")
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            return typing.Union[build(n.left), build(n.right)]  # noqa: UP007 - built at run time
        raise SignatureError(f"type {text!r} is not a supported type expression")

    return build(node)


def _resolve_annotation(annotation: Any, cls: type) -> Any:
    if isinstance(annotation, str):  # from __future__ import annotations in the user's module
        import sys

        module = sys.modules.get(cls.__module__)
        namespace = dict(vars(module)) if module else {}
        try:
            return eval(annotation, {**_TYPE_NAMES, **namespace})  # noqa: S307 - user's own module
        except Exception:
            return _parse_type(annotation, namespace)
    return annotation


def type_to_str(annotation: Any, *, literals: bool = True) -> str:
    """The annotation as source text (``parse`` reads it back). ``literals=False`` writes a
    Literal as the type of its values (``str``), for prompts that list the values apart."""
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        if not literals:
            kinds = sorted({type(v).__name__ for v in values})
            return kinds[0] if len(kinds) == 1 else "Union[" + ", ".join(kinds) + "]"
        return "Literal[" + ", ".join(repr(a) for a in values) + "]"
    if origin is not None:
        args = ", ".join(type_to_str(a, literals=literals) for a in typing.get_args(annotation))
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        if origin is typing.Union:
            name = "Union"
        return f"{name}[{args}]"
    if annotation is Any:
        return "Any"
    return str(annotation).replace("typing.", "")


def _default_instructions(cls: SignatureMeta) -> str:
    inputs = ", ".join(f"`{n}`" for n in cls.input_fields)
    outputs = ", ".join(f"`{n}`" for n in cls.output_fields)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def is_enum(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, enum.Enum)
