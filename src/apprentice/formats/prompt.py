"""Messages -> the prompt text a model reads: one function for training rows and for every
backend that serves a student, so the student is trained on exactly the prompt it is served."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = ["Kind", "messages_to_prompt", "render_prompt"]

Kind = Literal["causal", "seq2seq"]


def messages_to_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """Flattens chat messages into one prompt for text-completion endpoints and
    tokenizers without a chat template. Used both at inference and for training rows."""
    parts = [f"<|{m['role']}|>\n{m['content']}" for m in messages]
    return "\n".join(parts) + "\n<|assistant|>\n"


def render_prompt(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, kind: Kind = "causal"
) -> str:
    """The prompt text for a student: the tokenizer's chat template for causal students that
    have one, otherwise the plain flattening of ``messages_to_prompt``."""
    if kind == "causal" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
    return messages_to_prompt(messages)
