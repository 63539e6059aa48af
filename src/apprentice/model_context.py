"""How many tokens a model attends to: one number for training and serving.

The trainer refuses rows longer than this and the local engine refuses prompts longer than
this, so a student is never trained on a prompt it could not be served (T5: 512, from its
tokenizer; its relative positions put no limit in the config).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_CONTEXT", "context_length"]

DEFAULT_CONTEXT = 512


def context_length(config: Any, tokenizer: Any) -> int:
    """The tokens the model can attend to: the config's position limit, else the tokenizer's
    ``model_max_length`` when it is a real one, else ``DEFAULT_CONTEXT`` (T5's relative
    positions have no limit in the config; T5 was trained on 512 tokens)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(text, name, None)
        if type(value) is int and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if type(limit) is int and 0 < limit < 10_000_000:  # transformers' "no limit" is 1e30
        return limit
    return DEFAULT_CONTEXT
