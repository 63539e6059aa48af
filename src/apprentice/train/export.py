"""Export: the adapter as a PEFT directory plus manifest.json, with a vLLM servability check.

The PEFT directory (adapter_config.json + adapter_model.safetensors) is the contract
between training and every server; what it holds (the manifest, the content hash, vLLM's
servability rules) lives in ``apprentice.adapter``, below every layer, and is re-exported
here for the trainer. Servability is checked when the adapter is configured and saved,
rather than when a server refuses it. ``export_merged`` writes the base model with the
adapter folded in as a plain checkpoint (``apprentice export RUN --merged DIR``), for
servers and tools that take one model folder and no adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from apprentice.adapter import (
    MERGED_STAMP,
    AdapterManifest,
    Servability,
    adapter_hash,
    check_servable,
    read_manifest,
    vllm_lora_modules,
    write_manifest,
)
from apprentice.train.config import LoraConfig

__all__ = [
    "AdapterManifest",
    "Servability",
    "adapter_hash",
    "check_lora_config",
    "check_servable",
    "export_merged",
    "read_manifest",
    "write_manifest",
]


def check_lora_config(
    kind: str, lora: LoraConfig, target_modules: list[str], *, model: Any = None
) -> Servability:
    """Servability of the adapter ``lora`` would train; with the (transformers) ``model``,
    its targets are checked against that model's own linear layers (``vllm_lora_modules``)."""
    return check_servable(
        kind,
        r=lora.r,
        target_modules=target_modules,
        bias=lora.bias,
        use_dora=lora.use_dora,
        modules_to_save=lora.modules_to_save,
        lora_modules=vllm_lora_modules(model) if model is not None else None,
        peft_config={"lora_alpha": lora.alpha, "use_rslora": lora.use_rslora},
    )


def export_merged(
    adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *, trust_remote_code: bool = False
) -> Path:
    """Writes the adapter's base model with the adapter folded in (a full finetune: the
    trained model itself) to ``out_dir`` as a ``save_pretrained`` checkpoint with the base
    model's tokenizer and chat template, and ``apprentice_merged.json`` naming what it came
    from. ``out_dir`` must be new or empty; it is written beside itself and renamed into
    place once complete. The base model must be the one the adapter was trained on (its
    content hash is checked; a hub base is merged only at a pinned ``student.revision``).
    The base loads as it trained (the manifest's ``base_model_options``: revision, dtype,
    attention, remote code), but never in 4-bit: a QLoRA adapter is folded into the
    unquantized base, in the student's dtype, and with transformers' default attention
    (merging needs no attention kernel). An adapter folder may come from elsewhere: a
    manifest that asks for the base model's own code (``trust_remote_code``) is refused
    unless the caller trusts it too (``trust_remote_code=True``, the CLI's flag)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from apprentice.lm.adapter_files import read_adapter
    from apprentice.lm.local_adapters import merge_adapter
    from apprentice.student_loading import StudentLoading
    from apprentice.train.students import model_hash

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    manifest = read_manifest(adapter_dir)
    loading = StudentLoading.model_validate(manifest.base_model_options)
    if loading.trust_remote_code and not trust_remote_code:
        raise PermissionError(
            f"the adapter in {adapter_dir} was trained with student.trust_remote_code: "
            f"merging loads {manifest.base_model!r} with the code its files name; if you "
            "trust that code, export again with --trust-remote-code (nothing was written)"
        )
    loading = loading.model_copy(update={"attn_implementation": None})
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder: give a new folder for the "
            "merged model (nothing was written)"
        )
    base = manifest.base_model
    if manifest.method == "lora":
        if not Path(base).is_dir() and not _a_commit(loading.revision):
            raise FileNotFoundError(
                f"the adapter's base model {base!r} is not on this machine: it is needed to "
                "fold the adapter into its weights, and a hub base is loaded only when the "
                "adapter was trained at a pinned student.revision, a 40-character commit "
                f"hash (got {loading.revision!r}: a branch or tag may have moved since)"
            )
        found = model_hash(base, loading.revision)
        if found != manifest.base_model_hash:
            raise ValueError(
                f"the base model at {base} changed since the adapter was trained on it "
                f"(content hash {found}, trained on {manifest.base_model_hash}): merging "
                "would give a model nobody trained"
            )
    auto = AutoModelForSeq2SeqLM if manifest.kind == "seq2seq" else AutoModelForCausalLM
    if manifest.method == "full":  # the adapter folder holds the whole trained model
        own = loading.local_copy()
        model = auto.from_pretrained(adapter_dir, **own.model_options(quantize=False))
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, **own.hub_options())
    else:
        base_model = auto.from_pretrained(base, **loading.model_options(quantize=False))
        model = merge_adapter(base_model, read_adapter(adapter_dir))
        tokenizer = AutoTokenizer.from_pretrained(base, **loading.hub_options())
    building = out.parent / f".{out.name}.building"
    if building.exists():
        shutil.rmtree(building)  # an export that was killed earlier
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    stamp = {
        "base_model": base,
        "base_model_hash": manifest.base_model_hash,
        "base_model_options": manifest.base_model_options,
        "adapter": str(adapter_dir.resolve()),
        "adapter_hash": manifest.adapter_hash,
        "method": manifest.method,
        "kind": manifest.kind,
    }
    (building / MERGED_STAMP).write_text(json.dumps(stamp, indent=2))
    if out.exists():
        out.rmdir()  # empty, checked above
    os.rename(building, out)
    return out


def _a_commit(revision: str | None) -> bool:
    """Whether ``revision`` is a full commit hash: the one hub revision that cannot move."""
    return (
        revision is not None
        and len(revision) == 40
        and all(c in "0123456789abcdef" for c in revision.lower())
    )
