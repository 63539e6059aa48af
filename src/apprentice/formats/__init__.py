"""Formats: how a signature, demos and inputs become a prompt, and a completion becomes fields."""

from apprentice.formats.baked import BakedFormat
from apprentice.formats.base import Format, ParseError, SFTRow
from apprentice.formats.chat import ChatFormat
from apprentice.formats.json import JSONFormat
from apprentice.formats.prompt import messages_to_prompt, render_prompt
from apprentice.formats.t5 import T5Format

FORMATS: dict[str, type[Format]] = {
    "chat": ChatFormat,
    "json": JSONFormat,
    "t5": T5Format,
    "baked": BakedFormat,
}


def format_named(name: str) -> Format:
    """The format registered under ``name`` (``chat``, ``json``, ``t5``, ``baked``)."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown format {name!r}; known: {sorted(FORMATS)}") from None


__all__ = [
    "FORMATS",
    "BakedFormat",
    "ChatFormat",
    "Format",
    "JSONFormat",
    "ParseError",
    "SFTRow",
    "T5Format",
    "format_named",
    "messages_to_prompt",
    "render_prompt",
]
