"""The T5 format: the chat format's sections, written so that a T5 tokenizer carries them.

A real T5 tokenizer (SentencePiece with the ``nmt_nfkc`` rule) turns newlines and tabs into
spaces, collapses runs of spaces, drops spaces at either end, and has no token for ``{``,
``}``, ``<`` and a few other characters: the chat format's marker lines and a JSON value
do not survive a round trip through it. This format keeps the chat format's layout (a
system message, demos, the inputs; the reply as sections) and changes two things:

- a marker is ``[[name]]`` wherever it stands, not a line of its own, so a reply written
  on one line parses;
- every value (in the prompt and the reply) is escaped into characters the tokenizer keeps,
  with ``|``: a newline is ``|n``, a tab ``|t``, a brace ``|(`` / ``|)``, ``<`` is ``|l``, a
  backslash ``|/``, ``|`` itself ``||``, a space the tokenizer would drop ``|s``, a ``[``
  after a ``[`` is ``|[`` (so a value never holds a marker), and any other character
  outside ``SAFE`` is ``|uXXXX``. Parsing un-escapes.

So render -> tokenize -> decode -> parse gives back the values the format rendered, with
every newline, indent and brace (tested with T5's own spiece.model and with the tiny
students' tokenizer built to its rules). The escapes are what a T5 student learns to write.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apprentice.formats.chat import ChatFormat
from apprentice.formats.values import format_value, json_schema_hint

if TYPE_CHECKING:
    from apprentice.signature import Field, Signature

__all__ = ["SAFE", "T5Format", "escape", "unescape"]

# The characters of T5's vocabulary (its spiece.model, shared by t5-small ... t5-11b and
# flan-t5) that its normalizer leaves as they are: printable ASCII except < { } ` ~ ^ and
# backslash, and 54 others. Checked against the real file in tests/formats/test_t5.py.
SAFE = frozenset(
    string.ascii_letters
    + string.digits
    + " !\"#$%&'()*+,-./:;=>?@[]_|"
    + "£«\xad®°»ÉÎÜßàáâäçèéêîóôöùûüăşţșțавдеиклмнорсту–—‘’“”„•′€"
)
ESC = "|"  # rare in prose, and in T5's vocabulary
_NAMED = {
    "\n": "n",
    "\t": "t",
    "\r": "r",
    "{": "(",
    "}": ")",
    "<": "l",
    "`": "q",
    "~": "-",
    "^": "a",
    "\\": "/",
    ESC: ESC,
}
_UNNAMED = {v: k for k, v in _NAMED.items()} | {"s": " ", "[": "["}
_MARKER = "[[{name}]]"
# A marker anywhere in the text (the tokenizer keeps no line breaks); spaces inside allowed.
_MARKER_RE = re.compile(r"\[\[ ?([A-Za-z_][A-Za-z0-9_]*) ?\]\]")


def escape(text: str) -> str:
    """``text`` in characters T5 keeps; ``unescape(escape(t)) == t`` for every string."""
    out: list[str] = []
    n = len(text)
    for i, char in enumerate(text):
        if char == " ":
            # A space survives only alone between two other characters: T5 drops spaces
            # at either end and collapses runs (a newline or tab beside it is written as a
            # visible escape, so it does not count).
            alone = 0 < i < n - 1 and text[i - 1] != " " and text[i + 1] != " "
            out.append(" " if alone else ESC + "s")
        elif char in _NAMED:
            out.append(ESC + _NAMED[char])
        elif char == "[" and i > 0 and text[i - 1] == "[":
            out.append(ESC + "[")
        elif char in SAFE:
            out.append(char)
        else:
            code = ord(char)
            out.append(f"{ESC}u{code:04x}" if code <= 0xFFFF else f"{ESC}U{code:08x}")
    return "".join(out)


_ESCAPE_RE = re.compile(r"\|(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.S)


def unescape(text: str) -> str:
    """The inverse of ``escape``. An unknown escape is kept as written (a model's slip
    should not lose text), and so is a lone ``|`` at the end."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "uU" and len(code) > 1:
            value = int(code[1:], 16)
            return chr(value) if value <= 0x10FFFF else match.group(0)
        return _UNNAMED.get(code, match.group(0))

    return _ESCAPE_RE.sub(one, text)


def _sections(fields: Mapping[str, Field], values: Mapping[str, Any], is_input: bool) -> str:
    parts = []
    for name, field in fields.items():
        value = values.get(name)
        text = (
            "(not given)"
            if value is None
            else format_value(value, field.annotation, is_input=is_input)
        )
        parts.append(f"{_MARKER.format(name=name)} {escape(text)}")
    return " ".join(parts)


class T5Format(ChatFormat):
    """Chosen for seq2seq students (``dataset.format: auto``); any student may use it."""

    name = "t5"
    version = 1
    markers = _MARKER_RE  # inline: the tokenizer keeps no line breaks

    def system_message(self, signature: type[Signature]) -> str:
        # Leaner than the chat format's: T5 reads 512 tokens in all, and inputs need no JSON
        # schema (only outputs are parsed).
        layout = " ".join(f"{_MARKER.format(name=n)} ..." for n in signature.output_fields)
        return (
            f"Your input fields are: {_describe(signature.input_fields, hints=False)} "
            f"Your output fields are: {_describe(signature.output_fields)} "
            f"Each section starts with its marker; |n is a new line. You reply with: {layout} "
            f"Your task: {escape(' '.join(signature.instructions.split()))}"
        )

    def user_message(self, signature: type[Signature], inputs: Mapping[str, Any]) -> str:
        order = ", then ".join(_MARKER.format(name=n) for n in signature.output_fields)
        return f"{_sections(signature.input_fields, inputs, True)} Reply with {order}."

    def render_outputs(self, signature: type[Signature], outputs: Mapping[str, Any]) -> str:
        return _sections(signature.output_fields, outputs, False)

    def field_text(self, section: str) -> str:
        return unescape(section)


def _describe(fields: Mapping[str, Field], hints: bool = True) -> str:
    """The fields on one line: ``1. name (type): description [hint]``, escaped."""
    parts = []
    for i, (name, field) in enumerate(fields.items(), 1):
        part = f"{i}. {name} ({field.type_str()})"
        if field.desc:
            part += f": {' '.join(field.desc.split())}"
        hint = json_schema_hint(field.annotation) if hints else ""
        if hint:
            part += f" [{hint}]"
        parts.append(escape(part))
    return " ".join(parts)
