"""The model a run trains: the student's LoRA targets and peft wrapping, and the choices
that depend on the device (bf16 autocast, padding-free batches)."""

from __future__ import annotations

import warnings
from typing import Any

from apprentice.train.config import LoraConfig
from apprentice.train.cpu import BF16_MIN_PARAMS, cpu_has_bf16
from apprentice.train.students import StudentError, default_target_modules, linear_module_suffixes

__all__ = ["resolve_targets", "slow_bf16_warning", "use_bf16", "use_packing", "wrap_lora"]


def _peft_config(lora: LoraConfig, kind: str, targets: list[str]):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # peft mutates the lists it is given: hand it copies.
        target_modules=list(targets),
        bias=lora.bias,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None,
        task_type=TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM,
    )


def wrap_lora(model: Any, lora: LoraConfig, kind: str, targets: list[str]) -> Any:
    """The student with LoRA layers on ``targets`` (peft); only they train."""
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        return get_peft_model(model, _peft_config(lora, kind, targets))


def resolve_targets(model: Any, family: str, lora: LoraConfig) -> list[str]:
    """The module suffixes to adapt: the family default, or the config's, which must exist."""
    present = linear_module_suffixes(model)
    if lora.target_modules is None:
        return default_target_modules(model, family)
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise StudentError(
            f"target module(s) {missing} do not exist in this {family} model; "
            f"linear modules it has: {sorted(present)}"
        )
    return list(lora.target_modules)


def use_bf16(setting: Any, device_type: str, params: int) -> bool:
    """``auto``: CUDA with bf16, or a bf16-capable CPU with a student big enough to gain
    (see train/cpu.py for the measurements)."""
    import torch

    if setting != "auto":
        return bool(setting)
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device_type == "cpu" and params >= BF16_MIN_PARAMS and cpu_has_bf16()


def slow_bf16_warning(bf16: bool, device_type: str) -> str | None:
    """The warning for bf16 autocast on a CPU without bf16 matrix units, where it is slow."""
    if not (bf16 and device_type == "cpu") or cpu_has_bf16():
        return None
    return (
        "train.bf16 is on, but this CPU has no bf16 matrix instructions (AVX512-BF16/AMX): "
        "autocast is emulated and runs ~40x slower than fp32 (a 1536x576 matmul on an AVX2 "
        "box); set train.bf16: auto (fp32 here) or false"
    )


def use_packing(setting: Any, kind: str, device_type: str) -> bool:
    """``auto``: on for causal students on CUDA, where a varlen attention kernel makes it pay."""
    if kind != "causal":
        if setting is True:
            raise ValueError(
                "packing=True is for causal students; T5 batches are length-grouped instead"
            )
        return False
    return device_type == "cuda" if setting == "auto" else bool(setting)
