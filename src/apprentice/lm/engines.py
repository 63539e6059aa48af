"""The process's engines, shared by every LM of a backend: one per key (base model and the
options that change what it computes), kept in an ``EngineTable`` per backend.

``release_engines`` drops them, for all backends at once; ``model_key`` and
``weights_stamp`` say which engine a base model maps to, and whether its files were
written again since the engine loaded them (then a new engine is made, never stale weights).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["EngineTable", "model_key", "release_engines", "weights_stamp"]

_TABLES: list[EngineTable] = []


class EngineTable:
    """key -> (weights stamp, engine), and the lock that guards it. A backend makes one at
    import; ``release_engines`` finds it through the module-level list."""

    def __init__(self) -> None:
        self.engines: dict[tuple, tuple[tuple, Any]] = {}
        self.lock = threading.Lock()
        _TABLES.append(self)

    def pop_model(self, model: str | None) -> list[Any]:
        """Removes and returns the engines of ``model`` (None: all of them)."""
        with self.lock:
            keys = [k for k in self.engines if model is None or k[0] == model]
            return [self.engines.pop(k)[1] for k in keys]


def release_engines(base_model: str | Path | None = None) -> int:
    """Drops this process's engines (all, or those of ``base_model``), local and vLLM, and
    shuts them down; returns how many. Engines otherwise live as long as the process, so a
    long-running program that moves on to another student calls this to give the memory
    back. A local engine's memory goes once no LM holds it (an LM that does keeps working:
    its batching thread starts again on its next call); a vLLM engine's processes stop at
    once, and its LMs fail from then on with a message that says so."""
    wanted = None if base_model is None else model_key(base_model)
    dropped = [engine for table in _TABLES for engine in table.pop_model(wanted)]
    for engine in dropped:
        engine.shutdown()
    torch = sys.modules.get("torch")
    if dropped and torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return len(dropped)


def weights_stamp(model: str) -> tuple:
    """Name, size and modification time of a local model's weight and config files (empty
    for a hub name): cheap to take on every LM construction, and it changes whenever the
    files are written again."""
    path = Path(model)
    if not path.is_dir():
        return ()
    return tuple(
        (f.name, st.st_size, st.st_mtime_ns)
        for f in sorted(path.iterdir())
        if f.suffix in (".safetensors", ".bin", ".json") and (st := f.stat())
    )


def model_key(base_model: str | Path) -> str:
    """A local directory by its resolved path (so two spellings share an engine), else the
    hub name; a ``.gguf`` file by the checkpoint it converts into (once, cached). A value
    that can only be a local path but does not exist fails here."""
    from apprentice.files import looks_like_local_path
    from apprentice.gguf import is_gguf, resolve_model

    text = str(base_model)
    if is_gguf(text):
        text = resolve_model(text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"base model {text!r} is a file; pass the model's directory")
        return str(path.resolve())
    if looks_like_local_path(text):
        raise FileNotFoundError(
            f"base model directory {text!r} does not exist; pass a saved model directory "
            "(save_pretrained) or a hub model name"
        )
    return text
