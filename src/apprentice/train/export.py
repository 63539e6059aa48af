"""Export: the adapter as a PEFT directory plus manifest.json, with a vLLM servability check.

The PEFT directory (adapter_config.json + adapter_model.safetensors) is the contract
between training and every server. Servability is checked here, when the adapter is
saved, rather than when a server refuses it. Merging happens only when asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apprentice.train.config import VLLM_LORA_RANKS, LoraConfig

__all__ = [
    "AdapterManifest",
    "Servability",
    "adapter_hash",
    "check_servable",
    "merge_adapter",
    "read_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.adapter"
VERSION = 1

# Module suffixes vLLM's LoRA layers cover in decoder-only models (attention + MLP projections).
VLLM_TARGETS = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
        "dense",
        "fc1",
        "fc2",
        "query_key_value",
        "dense_h_to_4h",
        "dense_4h_to_h",
    }
)


@dataclass
class Servability:
    vllm: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            "servable by vLLM" if self.vllm else "not servable by vLLM: " + "; ".join(self.reasons)
        )


def check_servable(
    kind: str,
    *,
    r: int,
    target_modules: list[str],
    use_dora: bool = False,
    modules_to_save: list[str] | None = None,
    full_finetune: bool = False,
) -> Servability:
    """Says precisely why vLLM would refuse this adapter, if it would."""
    reasons = []
    if kind == "seq2seq":
        reasons.append("vLLM does not serve encoder-decoder (T5) models; use the local backend")
    if full_finetune:
        return Servability(not reasons, reasons + ([] if reasons else []))
    if r not in VLLM_LORA_RANKS:
        reasons.append(f"rank r={r} is not one of {sorted(VLLM_LORA_RANKS)}")
    if use_dora:
        reasons.append("DoRA (use_dora=True) is not supported")
    if modules_to_save:
        reasons.append(f"modules_to_save={modules_to_save} is not supported")
    unsupported = sorted(set(target_modules) - VLLM_TARGETS) if kind == "causal" else []
    if unsupported:
        reasons.append(f"target modules {unsupported} are not LoRA layers vLLM supports")
    return Servability(not reasons, reasons)


def check_lora_config(kind: str, lora: LoraConfig, target_modules: list[str]) -> Servability:
    return check_servable(
        kind,
        r=lora.r,
        target_modules=target_modules,
        use_dora=lora.use_dora,
        modules_to_save=lora.modules_to_save,
    )


def adapter_hash(adapter_dir: str | os.PathLike) -> str:
    """Content hash of the adapter's weights and config: the adapter's identity in caches."""
    path = Path(adapter_dir)
    digest = hashlib.sha256()
    files = [
        p
        for p in sorted(path.iterdir())
        if p.name.startswith(("adapter_", "model"))
        and p.suffix in (".safetensors", ".bin", ".json")
    ]
    if not files:
        raise FileNotFoundError(f"{path} holds no adapter_config.json / adapter_model.safetensors")
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class AdapterManifest:
    name: str
    kind: str  # "causal" | "seq2seq"
    method: str  # "lora" | "full"
    base_model: str
    base_model_hash: str
    dataset_hash: str
    predictors: list[str]
    train_config: dict[str, Any]
    lora_config: dict[str, Any] | None
    metrics: dict[str, Any]
    servable: dict[str, Any]
    adapter_hash: str = ""
    schema: str = SCHEMA
    version: int = VERSION
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(adapter_dir: str | os.PathLike, manifest: AdapterManifest) -> Path:
    path = Path(adapter_dir) / "manifest.json"
    manifest.adapter_hash = adapter_hash(adapter_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def read_manifest(adapter_dir: str | os.PathLike) -> AdapterManifest:
    path = Path(adapter_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{adapter_dir} has no manifest.json: not an apprentice adapter directory"
        )
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an apprentice adapter manifest")
    return AdapterManifest(**data)


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Merges a LoRA adapter into its base and saves a standalone model (only when asked)."""
    from peft import PeftModel

    from apprentice.train.students import load_student

    manifest = read_manifest(adapter_dir)
    if manifest.method != "lora":
        raise ValueError(f"{adapter_dir} is a {manifest.method} checkpoint, not a LoRA adapter")
    student = load_student(manifest.base_model)
    merged = PeftModel.from_pretrained(student.model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    student.tokenizer.save_pretrained(out)
    return out
