"""Rebuilding an LM from the JSON a saved program holds."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

__all__ = ["lm_from_config"]

# backend name -> (module, class); the class's keyword parameters are the config's keys.
_BACKENDS = {
    "openai": ("apprentice.lm.openai", "OpenAILM"),
    "local": ("apprentice.lm.local", "LocalLM"),
    "vllm": ("apprentice.lm.vllm", "VLLMLM"),
}


def lm_from_config(config: dict[str, Any]):
    """The inverse of ``lm.to_config()``: ``{"backend": "openai", "model": ..., ...}``."""
    if not isinstance(config, dict):
        raise TypeError(f"an LM config is a dict with a 'backend' key, got {config!r:.200}")
    backend = config.get("backend")
    if backend not in _BACKENDS:
        raise ValueError(
            f"saved LM has backend {backend!r}, which apprentice cannot rebuild; "
            f"known: {sorted(_BACKENDS)}"
        )
    module, name = _BACKENDS[backend]
    cls = getattr(importlib.import_module(module), name)
    options = {k: v for k, v in config.items() if k != "backend"}
    if backend in ("local", "vllm"):  # their first parameter is the base model
        options["base_model"] = options.pop("model", None)
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"saved LM config has unknown option(s) {unknown} for backend {backend!r}; "
            f"known: {sorted(known)}"
        )
    if isinstance(options.get("price"), dict):
        from apprentice.lm.usage import Price

        options["price"] = Price(**options["price"])
    return cls(**options)
