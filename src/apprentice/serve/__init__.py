"""Serving students and swapping adapters: our OpenAI-compatible server over the local
backend (``server``), a supervised ``vllm serve`` (``vllm_server``), binding adapters into
a running program (``bind``), and what a run directory serves (``registry``).

The names below load on first use, so importing this package stays light and
``python -m apprentice.serve.<module>`` runs that module rather than a copy imported by
this package first. ``python -m apprentice.serve RUN_DIR`` is ``apprentice serve``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Servable": "apprentice.serve.servable",
    "Server": "apprentice.serve.server",
    "VLLMServer": "apprentice.serve.vllm_server",
    "bind": "apprentice.serve.swap",
    "find_servable": "apprentice.serve.servable",
    "swap_adapter": "apprentice.serve.swap",
    "with_adapter": "apprentice.serve.swap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'apprentice.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
