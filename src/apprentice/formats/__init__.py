"""Formats: how a signature, demos and inputs become a prompt, and a completion becomes fields."""

from apprentice.formats.base import Format, ParseError, SFTRow
from apprentice.formats.chat import ChatFormat
from apprentice.formats.json import JSONFormat

__all__ = ["ChatFormat", "Format", "JSONFormat", "ParseError", "SFTRow", "messages_to_prompt"]


def messages_to_prompt(messages) -> str:
    """Flattens chat messages into one prompt for text-completion endpoints and
    tokenizers without a chat template. Used both at inference and for training rows."""
    parts = [f"<|{m['role']}|>\n{m['content']}" for m in messages]
    return "\n".join(parts) + "\n<|assistant|>\n"
