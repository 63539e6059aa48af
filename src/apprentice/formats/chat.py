"""The chat format: one section per field, each headed by a marker line ``[[name]]``.

A prompt is a system message (the fields with their types and descriptions, the
layout, and the instructions), then each demo as a user/assistant pair, then the
inputs as the last user message. A completion is the output sections in order::

    [[reasoning]]
    Paris is the capital and largest city of France.

    [[answer]]
    Paris

Why ``[[name]]`` and not a markdown heading: real models write markdown in their
reasoning (``### Summary``, even ``### answer`` when they quote the format), and a
heading marker cut such reasoning short or took a quoted answer for the real one. A line
that is exactly ``[[answer]]`` is not something a model writes by accident, and it costs
one token more than ``### answer`` on a Llama-family tokenizer.

Parsing is robust to quoted markers: only the signature's output fields count, and they
are located from the end of the completion backwards (the last field at its last marker
line, each earlier field at its last marker line before that), so a value may quote any
marker line except its own. The patterns match whole lines with no nested repetition:
linear in the completion's length, whatever it holds.
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

__all__ = ["MARKER", "ChatFormat", "describe_fields", "find_sections", "render_sections"]

MARKER = "[[{name}]]"
# One optional run of spaces at each end, nothing repeated inside: no backtracking blow-up.
_MARKER_RE = re.compile(r"^[ \t]*\[\[ ?([A-Za-z_][A-Za-z0-9_]*) ?\]\][ \t]*$", re.M)
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


def find_sections(
    text: str, names: Sequence[str], markers: re.Pattern[str] = _MARKER_RE
) -> dict[str, str]:
    """The text of each field in ``names`` (in their order) found in ``text``, whose
    ``markers`` pattern captures a field's name.

    Fields are placed from the last backwards: each at its last marker line before the
    next field's marker. A value may therefore quote the marker of any other field (a
    reasoning that says "then I write [[answer]]" on a line of its own) and still parse.
    """
    wanted = set(names)
    lines: dict[str, list[re.Match[str]]] = {}
    for match in markers.finditer(text):
        if match.group(1) in wanted:
            lines.setdefault(match.group(1), []).append(match)
    sections: dict[str, str] = {}
    limit = len(text)  # where the field after this one begins
    for name in reversed(names):
        found = [m for m in lines.get(name, ()) if m.end() <= limit]
        if not found:
            continue
        marker = found[-1]
        sections[name] = text[marker.end() : limit].strip()
        limit = marker.start()
    return sections


def _reply_order(signature: type[Signature]) -> str:
    names = [f"`{MARKER.format(name=n)}`" for n in signature.output_fields]
    return "Reply with the sections " + ", then ".join(names) + "."


class ChatFormat(Format):
    name = "chat"
    version = 2  # 2: [[name]] markers (1 used "### name")
    markers = _MARKER_RE  # what a field's marker looks like in a reply (T5: inline)

    def field_text(self, section: str) -> str:
        """A section's text as the value it holds (T5: un-escaped)."""
        return section

    def system_message(self, signature: type[Signature]) -> str:
        # Kept lean: every token here is paid on every call and every training row
        # (measured on the demo with SmolLM2's tokenizer in docs/benchmarks.md).
        layout_out = "\n\n".join(f"{MARKER.format(name=n)}\n<{n}>" for n in signature.output_fields)
        return (
            f"Your input fields are:\n{describe_fields(signature.input_fields)}\n"
            f"Your output fields are:\n{describe_fields(signature.output_fields)}\n\n"
            "Each field is a section headed by its marker line. You reply with:\n\n"
            f"{layout_out}\n\n"
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
        sections = find_sections(completion, list(signature.output_fields), self.markers)
        missing = [n for n in signature.output_fields if n not in sections]
        if missing and len(signature.output_fields) == 1 and not self.markers.search(completion):
            # A single-output signature answered without markers: take the whole text.
            sections = {next(iter(signature.output_fields)): completion.strip()}
            missing = []
        invalid: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in sections:
                continue
            try:
                values[name] = parse_value(self.field_text(sections[name]), field.annotation)
            except ValueError as exc:
                invalid[name] = str(exc)
        if missing or invalid:
            raise ParseError(completion, missing, invalid, self.name)
        return values
