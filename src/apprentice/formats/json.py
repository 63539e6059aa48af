"""The JSON format: inputs as marker sections, the reply as one JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apprentice.formats.base import ParseError
from apprentice.formats.chat import ChatFormat, describe_fields
from apprentice.formats.values import parse_value, to_jsonable

if TYPE_CHECKING:
    from apprentice.signature import Signature

__all__ = ["JSONFormat"]


def _fenced_blocks(text: str) -> list[str]:
    """The bodies of ```...``` blocks (an optional ``json`` tag dropped), in order. A scan
    for the fences, not a regex: the lazy regex it replaced was quadratic on a fence
    followed by a long run of whitespace."""
    blocks, start = [], text.find("```")
    while start != -1:
        end = text.find("```", start + 3)
        if end == -1:
            break
        body = text[start + 3 : end]
        blocks.append(body.removeprefix("json").lstrip())
        start = text.find("```", end + 3)
    return blocks


class JSONFormat(ChatFormat):
    name = "json"
    version = 2  # 2: inputs under [[name]] markers

    def system_message(self, signature: type[Signature]) -> str:
        keys = ", ".join(f'"{n}"' for n in signature.output_fields)
        return (
            f"Your input fields are:\n{describe_fields(signature.input_fields)}\n"
            f"Your output fields are:\n{describe_fields(signature.output_fields)}\n\n"
            "Inputs arrive in sections, one per field, each headed by a marker line `[[<field>]]`.\n"
            f"You reply with one JSON object and nothing else, with exactly the keys {keys}.\n\n"
            f"Your task: {signature.instructions}"
        )

    def user_message(self, signature: type[Signature], inputs: Mapping[str, Any]) -> str:
        from apprentice.formats.chat import render_sections

        keys = ", ".join(f'"{n}"' for n in signature.output_fields)
        return (
            render_sections(signature.input_fields, inputs, True)
            + f"\n\nReply with a JSON object with the keys {keys}."
        )

    def render_outputs(self, signature: type[Signature], outputs: Mapping[str, Any]) -> str:
        return json.dumps(
            {n: to_jsonable(outputs.get(n)) for n in signature.output_fields}, ensure_ascii=False
        )

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        obj = _extract_object(completion)
        if obj is None:
            raise ParseError(
                completion,
                missing=list(signature.output_fields),
                invalid={"(reply)": "no JSON object found"},
                format_name=self.name,
            )
        missing = [n for n in signature.output_fields if n not in obj]
        invalid: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in obj:
                continue
            raw = obj[name]
            text = raw if isinstance(raw, str) else json.dumps(raw)
            try:
                values[name] = parse_value(text, field.annotation)
            except ValueError as exc:
                invalid[name] = str(exc)
        if missing or invalid:
            raise ParseError(completion, missing, invalid, self.name)
        return values


def _extract_object(text: str) -> dict[str, Any] | None:
    candidates = [*_fenced_blocks(text), text]
    for candidate in candidates:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start == -1 or end <= start:
            continue
        try:
            obj = json.loads(candidate[start : end + 1])
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            continue
        if isinstance(obj, dict):
            return obj
    return None
