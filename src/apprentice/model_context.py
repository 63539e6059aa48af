"""How many tokens a model attends to: one number for training and serving.

The trainer refuses rows longer than this and the local engine refuses prompts longer than
this, so a student is never trained on a prompt it could not be served (T5: 512, from its
tokenizer; its relative positions put no limit in the config).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_CONTEXT", "context_length", "local_context_length"]

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


def local_context_length(
    name_or_path: str, hub_options: dict[str, Any] | None = None
) -> int | None:
    """``context_length`` of a model whose config is on this machine (a folder, or a hub name
    in the local cache), read from its config and ``tokenizer_config.json`` without loading
    the tokenizer; None when the files are not here (nothing is downloaded).
    ``hub_options``: the student's ``revision`` and ``trust_remote_code``."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            name_or_path, local_files_only=True, **hub_options or {}
        )
    except (OSError, ValueError):
        return None
    limit = None
    folder = Path(name_or_path).expanduser()
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            revision = (hub_options or {}).get("revision")
            cached = try_to_load_from_cache(
                name_or_path, "tokenizer_config.json", revision=revision
            )
            tokenizer_config = Path(cached) if isinstance(cached, str) else None
        except (ImportError, ValueError):
            tokenizer_config = None
    if tokenizer_config is not None and tokenizer_config.is_file():
        limit = json.loads(tokenizer_config.read_text()).get("model_max_length")
    return context_length(config, SimpleNamespace(model_max_length=limit))
