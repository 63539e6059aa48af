"""Loading students (T5 family as seq2seq, Llama/Qwen/Mistral family as causal) and
choosing LoRA target modules per family."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from apprentice.files import looks_like_local_path
from apprentice.student_loading import StudentLoading

__all__ = [
    "Student",
    "StudentError",
    "default_target_modules",
    "linear_module_suffixes",
    "load_student",
    "model_hash",
    "student_kind",
]

log = logging.getLogger(__name__)

Kind = Literal["causal", "seq2seq"]

# Module name suffixes adapted by default, per family: every attention and MLP projection.
_FAMILY_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "umt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


class StudentError(ValueError):
    """A student that cannot be loaded or adapted as asked."""


@dataclass
class Student:
    model: Any
    tokenizer: Any
    kind: Kind
    name: str
    family: str


def _check_exists(name_or_path: str | os.PathLike) -> str:
    name = str(name_or_path)
    path = Path(name).expanduser()
    looks_local = looks_like_local_path(name)
    if looks_local and not (path / "config.json").exists():
        raise StudentError(
            f"student {name!r} is not a model directory (no config.json at {path}); give a local "
            "path saved with save_pretrained, or a hub name like 'google/flan-t5-small'"
        )
    return str(path) if looks_local else name


def _load_failure(name: str, exc: BaseException) -> str:
    """One line for a student that cannot be loaded; a gated or private hub model names
    the fix (the hub answers 401/403, which transformers wraps in an OSError)."""
    text = str(exc)
    if any(k in text for k in ("gated repo", "401", "403", "Unauthorized", "restricted")):
        return (
            f"student {name!r} is a gated or private model on the Hugging Face Hub: accept its "
            "terms on the model's page, then set HF_TOKEN to a token with access (or run "
            "`hf auth login`)"
        )
    return f"cannot load student config {name!r}: {' '.join(text.split())[:300]}"


def student_kind(config: Any) -> Kind:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def kind_of_model(name_or_path: str | os.PathLike, loading: StudentLoading | None = None) -> Kind:
    """``seq2seq`` or ``causal``, read from the model's config alone (a ``.gguf`` student is
    a Llama-family checkpoint: causal). Used to choose the student's prompt format before
    the model is loaded; ``loading`` gives the config's revision and remote code."""
    from transformers import AutoConfig

    name = str(name_or_path)
    if name.endswith(".gguf"):
        return "causal"
    loading = loading or StudentLoading()
    try:
        loading.check(name, here=False)
    except ValueError as exc:
        raise StudentError(str(exc)) from None
    try:
        return student_kind(
            AutoConfig.from_pretrained(_check_exists(name), **loading.hub_options())
        )
    except (OSError, ValueError) as exc:
        raise StudentError(_load_failure(name, exc)) from None


def load_student(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = None,
    device: str | None = None,
    loading: StudentLoading | None = None,
) -> Student:
    """Loads a student by its config: encoder-decoder -> seq2seq, otherwise causal. A
    ``.gguf`` file is converted into a checkpoint first (once; see apprentice.gguf).
    ``loading`` says how (revision, dtype, attention, 4-bit, remote code; checked before
    anything loads); ``dtype`` overrides its dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from apprentice.gguf import GGUFError, resolve_model

    loading = loading or StudentLoading()
    try:
        loading.check(str(name_or_path))
    except ValueError as exc:
        raise StudentError(str(exc)) from None
    try:
        name = _check_exists(resolve_model(name_or_path))
    except GGUFError as exc:
        raise StudentError(str(exc)) from None
    try:
        config = AutoConfig.from_pretrained(name, **loading.hub_options())
    except (OSError, ValueError) as exc:
        raise StudentError(_load_failure(name, exc)) from None
    kind = student_kind(config)
    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    options = loading.model_options(dtype=dtype, device=device)
    try:
        model = cls.from_pretrained(name, **options)
    except ImportError as exc:  # e.g. flash_attention_2 without the flash-attn package
        raise StudentError(f"cannot load student {name!r} as asked: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(name, **loading.hub_options())
    if tokenizer.pad_token_id is None:
        # Reuse eos for padding: the vocabulary is never changed.
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None and "device_map" not in options:  # a 4-bit model is placed as loaded
        model.to(device)
    return Student(model, tokenizer, kind, name, getattr(config, "model_type", "unknown"))


def linear_module_suffixes(model: Any) -> set[str]:
    """Last name component of every nn.Linear in the model (what target_modules may name)."""
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name
    }


def default_target_modules(model: Any, family: str) -> list[str]:
    present = linear_module_suffixes(model)
    wanted = _FAMILY_TARGETS.get(family)
    if wanted is None:
        # Unknown family: every linear layer except the output head.
        chosen = sorted(present - {"lm_head"})
        log.warning("no default LoRA targets for model type %r; adapting %s", family, chosen)
        return chosen
    chosen = [m for m in wanted if m in present]
    if not chosen:
        raise StudentError(
            f"none of the default targets {wanted} exist in this {family} model; set target_modules"
        )
    return chosen


def model_hash(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """Content hash of a local model's weights and config; for a hub name, a hash of the
    name and its ``revision`` (student.revision: another revision is another student)."""
    path = Path(name_or_path)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(str(name_or_path).encode())
        if revision is not None:
            digest.update(f"@{revision}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(path.iterdir()):
        if file.suffix in (".safetensors", ".bin", ".json") and file.is_file():
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
