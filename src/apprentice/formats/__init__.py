"""Formats: how a signature, demos and inputs become a prompt, and a completion becomes fields."""

from apprentice.formats.base import Format, ParseError, SFTRow
from apprentice.formats.chat import ChatFormat
from apprentice.formats.json import JSONFormat
from apprentice.formats.prompt import messages_to_prompt, render_prompt

__all__ = [
    "ChatFormat",
    "Format",
    "JSONFormat",
    "ParseError",
    "SFTRow",
    "messages_to_prompt",
    "render_prompt",
]
