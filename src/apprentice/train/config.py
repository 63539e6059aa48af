"""Typed training configuration: every LoRA and training hyperparameter lives here, with help."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from apprentice.adapter import VLLM_LORA_RANKS
from apprentice.config import ConfigSection

__all__ = ["VLLM_LORA_RANKS", "ConfigSection", "LauncherConfig", "LoraConfig", "TrainConfig"]


class LoraConfig(ConfigSection):
    """LoRA hyperparameters (peft). Defaults suit a 0.5-8B causal student."""

    r: int = Field(
        16,
        ge=1,
        description="rank of the update matrices; vLLM serves any r up to its max_lora_rank (<= 512)",
    )
    alpha: int = Field(32, ge=1, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | None = Field(
        None,
        description="module name suffixes to adapt; None picks the family default (all attention and MLP projections)",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases to train")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA); vLLM cannot serve it")
    use_rslora: bool = Field(False, description="rank-stabilized scaling alpha / sqrt(r)")
    modules_to_save: list[str] | None = Field(
        None,
        description="extra modules trained in full and saved with the adapter; vLLM cannot serve them",
    )
    require_servable: bool = Field(
        True, description="refuse, before training, a causal adapter that vLLM could not serve"
    )


class LauncherConfig(ConfigSection):
    """How the training processes start: in this process, or under ``accelerate launch``
    (several GPUs or machines, FSDP, DeepSpeed: whatever the accelerate config sets up)."""

    kind: Literal["none", "accelerate"] = Field(
        "none", description="none = train in this process; accelerate = under accelerate launch"
    )
    config_file: str | None = Field(
        None, description="accelerate config YAML (`accelerate config` writes one)"
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="processes to start; None = the config file's, else one per CUDA device",
    )
    args: list[str] = Field(
        default_factory=list,
        description="more `accelerate launch` options, e.g. ['--main_process_port', '29600']",
    )


class TrainConfig(ConfigSection):
    """The training run. ``max_steps`` wins over ``epochs`` when set."""

    epochs: float = Field(3.0, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps to run; overrides epochs"
    )
    batch_size: int = Field(16, ge=1, description="rows per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps of linear warm-up")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule after warm-up"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(
        1024, ge=16, description="tokens per row (causal: prompt + target; seq2seq: prompt)"
    )
    max_target_length: int = Field(
        256, ge=1, description="target tokens; longer targets are dropped and counted, never cut"
    )
    full_finetune: bool = Field(False, description="train every weight instead of a LoRA adapter")
    bf16: Literal["auto"] | bool = Field(
        "auto",
        description="bf16 autocast; auto = on for CUDA devices with bf16, and on CPUs with "
        "AVX512-BF16/AMX for students of >= 50M parameters (tiny ones gain little)",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    packing: Literal["auto"] | bool = Field(
        "auto",
        description="causal only: padding-free batches (rows flattened, position ids restart); "
        "auto = on for CUDA, where a varlen attention kernel makes it pay",
    )
    group_by_length: bool = Field(True, description="batch rows of similar length to cut padding")
    eval_every: int | None = Field(
        None, ge=1, description="validation loss every N optimizer steps; None = each epoch"
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="stop once the validation loss has not improved (by more than "
        "early_stopping_min_delta) for this many evaluations in a row, and keep the weights "
        "of the best evaluation; None = train every epoch",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="the least fall in validation loss that counts as improving"
    )
    save_every: int | None = Field(
        None, ge=1, description="checkpoint every N optimizer steps; None = each epoch"
    )
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept on disk")
    logging_steps: int = Field(10, ge=1, description="log the training loss every N steps")
    seed: int = Field(0, description="seed for shuffling, dropout and LoRA init")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    num_threads: Literal["auto"] | int = Field(
        "auto",
        description="CPU training threads; auto = the cores idle when training starts (at "
        "least 1), so a busy box does not stall the run; a resumed run reuses its first choice",
    )
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig,
        description="start the training under accelerate launch (docs/training.md)",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="experiment trackers that get the loss, validation loss, learning rate, "
        "tokens/s and the run's settings and hashes (through accelerate); empty = none",
    )
    tracking_dir: str | None = Field(
        None,
        description="where the trackers write (TensorBoard events, MLflow's database when "
        "MLFLOW_TRACKING_URI is unset, wandb's files); None = <adapter folder>/tracking",
    )
    tracking_project: str = Field(
        "apprentice",
        min_length=1,
        description="the TensorBoard subfolder, MLflow experiment or wandb project; each "
        "training run is one run in it, named <adapter>-<start time>",
    )

    @field_validator("num_threads")
    @classmethod
    def _positive_threads(cls, value):
        if value != "auto" and value < 1:
            raise ValueError(f"num_threads must be 'auto' or >= 1, got {value}")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_a_list(cls, value):
        if isinstance(value, str):  # `train.report_to=tensorboard` on the command line
            return [value]
        return value

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once(cls, value):
        return list(dict.fromkeys(value))

    @field_validator("bf16", "packing", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value
