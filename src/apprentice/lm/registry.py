"""Rebuilding an LM from the JSON a saved program holds."""

from __future__ import annotations

from typing import Any

__all__ = ["lm_from_config"]


def lm_from_config(config: dict[str, Any]):
    backend = config.get("backend")
    options = {k: v for k, v in config.items() if k != "backend"}
    if backend == "openai":
        from apprentice.lm.openai import OpenAILM

        return OpenAILM(**options)
    raise ValueError(
        f"saved LM has backend {backend!r}, which apprentice cannot rebuild; known: ['openai']"
    )
