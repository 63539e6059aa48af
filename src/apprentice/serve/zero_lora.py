"""The all-zero LoRA adapter that base-model requests go through on vLLM's CPU build.

vLLM's CPU LoRA kernels read a row's "no adapter" index (-1) as the last LoRA slot (torch
indexing wraps it; vllm/lora/ops/torch_ops/lora_ops.py), so a base-model request that
shares an engine step with adapter requests gets the adapter in that slot. Only steps
where every row is a base row take the fast path that skips LoRA
(vllm/lora/punica_wrapper/punica_cpu.py), and a server cannot keep its clients' requests
apart. Sent through this adapter instead, a base request has a slot of its own: its
``lora_B`` (and ``lora_A``) are zeros, so it adds exactly 0.0 to ``q_proj`` / ``v_proj``,
and every module it does not name is reset to zeros in its slot
(vllm/lora/model_manager.py, ``activate_adapter``). Outputs stay those of the base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ZERO_LORA", "write_zero_lora"]

ZERO_LORA = "zero-lora"  # the name base-model requests are served under on the CPU build
TARGETS = ("q_proj", "v_proj")


def write_zero_lora(
    base_model: str, folder: Path, *, rank: int = 1, hub_options: dict[str, Any] | None = None
) -> Path:
    """Writes the zero adapter for ``base_model`` (a model directory or hub name) into
    ``folder`` as a PEFT directory; returns ``folder``. Its shapes come from the model's
    config (a Llama-style attention with ``q_proj`` / ``v_proj``), read with ``hub_options``
    (the served revision and remote code)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_model, **(hub_options or {}))
    config = getattr(config, "text_config", None) or config
    needed = ("hidden_size", "num_attention_heads", "num_hidden_layers")
    missing = [name for name in needed if not isinstance(getattr(config, name, None), int)]
    if missing:
        raise ValueError(
            f"cannot shape a zero LoRA adapter for {base_model!r}: its config has no {missing}; "
            "serve it with base_lora=False (base rows may then get an adapter's output on "
            "vLLM's CPU build) or on the CUDA build"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    outputs = {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in TARGETS:
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.zeros(rank, config.hidden_size)
            tensors[f"{key}.lora_B.weight"] = torch.zeros(outputs[module], rank)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "bias": "none",
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return folder
