"""Export: the adapter as a PEFT directory plus manifest.json, with a vLLM servability check.

The PEFT directory (adapter_config.json + adapter_model.safetensors) is the contract
between training and every server; what it holds (the manifest, the content hash, vLLM's
servability rules) lives in ``apprentice.adapter``, below every layer, and is re-exported
here for the trainer. Servability is checked when the adapter is configured and saved,
rather than when a server refuses it. (A merged copy of the weights is served by
``LocalLM(merge=True)``; nothing writes one to disk yet.)
"""

from __future__ import annotations

from typing import Any

from apprentice.adapter import (
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
