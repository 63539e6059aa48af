"""The chat format: one section per field, each headed by a marker line ``### name``.

A prompt is a system message (the fields with their types and descriptions, the
layout, and the instructions), then each demo as a user/assistant pair, then the
inputs as the last user message. A completion is the output sections in order::

    ### reasoning
    Paris is the capital and largest city of France.

    ### answer
    Paris
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apprentice.formats.base import Format, ParseError
from apprentice.formats.values import format_value, json_schema_hint, parse_value

if TYPE_CHECKING:
    from apprentice.lm.base import Message
    from apprentice.signature import Field, Signature

__all__ = ["ChatFormat", "describe_fields", "render_sections"]

MARKER = "### {name}"
_MARKER_RE = re.compile(r"^[ \t]*###[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*:?[ \t]*$", re.M)
NOT_GIVEN = "(not given)"


def describe_fields(fields: Mapping[str, Field]) -> str:
    lines = []
    for i, (name, field) in enumerate(fields.items(), 1):
        line = f"{i}. `{name}` ({field.type_str()})"
        if field.desc:
            line += f": {field.desc}"
        hint = json_schema_hint(field.annotation)
        if hint:
            line += f" [{hint}]"
        lines.append(line)
    return "\n".join(lines)


def render_sections(fields: Mapping[str, Field], values: Mapping[str, Any], is_input: bool) -> str:
    parts = []
    for name, field in fields.items():
        value = values.get(name)
        text = (
            NOT_GIVEN if value is None else format_value(value, field.annotation, is_input=is_input)
        )
        parts.append(f"{MARKER.format(name=name)}\n{text}")
    return "\n\n".join(parts)


def _reply_order(signature: type[Signature]) -> str:
    names = [f"`{MARKER.format(name=n)}`" for n in signature.output_fields]
    return "Reply with the sections " + ", then ".join(names) + "."


class ChatFormat(Format):
    name = "chat"
    version = 1

    def system_message(self, signature: type[Signature]) -> str:
        layout_in = "\n\n".join(f"{MARKER.format(name=n)}\n<{n}>" for n in signature.input_fields)
        layout_out = "\n\n".join(f"{MARKER.format(name=n)}\n<{n}>" for n in signature.output_fields)
        return (
            f"Your input fields are:\n{describe_fields(signature.input_fields)}\n"
            f"Your output fields are:\n{describe_fields(signature.output_fields)}\n\n"
            "Each message is laid out in sections, one per field, each headed by its marker line.\n"
            f"Inputs arrive as:\n\n{layout_in}\n\n"
            f"You reply with:\n\n{layout_out}\n\n"
            f"Your task: {signature.instructions}"
        )

    def user_message(self, signature: type[Signature], inputs: Mapping[str, Any]) -> str:
        return (
            render_sections(signature.input_fields, inputs, True) + "\n\n" + _reply_order(signature)
        )

    def render(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        messages: list[Message] = [{"role": "system", "content": self.system_message(signature)}]
        for demo in demos:
            messages.append({"role": "user", "content": self.user_message(signature, demo)})
            messages.append({"role": "assistant", "content": self.render_outputs(signature, demo)})
        messages.append({"role": "user", "content": self.user_message(signature, inputs)})
        return messages

    def render_outputs(self, signature: type[Signature], outputs: Mapping[str, Any]) -> str:
        return render_sections(signature.output_fields, outputs, False)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        sections: dict[str, str] = {}
        matches = list(_MARKER_RE.finditer(completion))
        for i, match in enumerate(matches):
            name = match.group(1)
            end = matches[i + 1].start() if i + 1 < len(matches) else len(completion)
            if name not in sections:  # the first section of a name wins
                sections[name] = completion[match.end() : end].strip()
        missing = [n for n in signature.output_fields if n not in sections]
        if missing and len(signature.output_fields) == 1 and not matches:
            # A single-output signature answered without markers: take the whole text.
            sections = {next(iter(signature.output_fields)): completion.strip()}
            missing = []
        invalid: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in sections:
                continue
            try:
                values[name] = parse_value(sections[name], field.annotation)
            except ValueError as exc:
                invalid[name] = str(exc)
        if missing or invalid:
            raise ParseError(completion, missing, invalid, self.name)
        return values
