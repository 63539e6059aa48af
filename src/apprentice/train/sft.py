"""The training run: a LoRA (or full) finetune of a student on an SFT dataset.

Built as an accelerate loop rather than on transformers' Trainer: on the tiny CPU
students we test with, the loop's lean per-step path and length-grouped batches train
faster than TRL's SFTTrainer (see docs/benchmarks.md, scripts/bench_train.py), and it
keeps resume exact. accelerate gives the rest: gradient accumulation, bf16 autocast,
checkpoint state, and multi-GPU / multi-process runs through ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.dataset.build import load_dataset_dir
from apprentice.dataset.tokenize import tokenize_rows
from apprentice.train.batching import collate_padded, collate_padding_free, length_grouped_batches
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.cpu import BF16_MIN_PARAMS, choose_threads, cpu_has_bf16, cpu_threads
from apprentice.train.export import (
    AdapterManifest,
    check_lora_config,
    check_servable,
    write_manifest,
)
from apprentice.train.resume import resumable_checkpoint, run_fingerprint
from apprentice.train.students import (
    StudentError,
    default_target_modules,
    linear_module_suffixes,
    load_student,
    model_hash,
)

__all__ = ["TrainResult", "train_adapter"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    manifest: AdapterManifest
    metrics: dict[str, Any] = field(default_factory=dict)


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


def _resolve_targets(model: Any, family: str, lora: LoraConfig) -> list[str]:
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


def _latest_checkpoint(out_dir: Path) -> Path | None:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save_checkpoint(accelerator, out_dir: Path, state: dict[str, Any], keep: int) -> None:
    root = out_dir / "checkpoints"
    final = root / f"step-{state['global_step']}"
    tmp = root / f".tmp-step-{state['global_step']}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        # trainer_state.json is written last: a checkpoint without it is incomplete.
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        finished = sorted(
            (p for p in root.glob("step-*") if (p / "trainer_state.json").exists()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in finished[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _use_bf16(setting, device_type: str, params: int) -> bool:
    """``auto``: CUDA with bf16, or a bf16-capable CPU with a student big enough to gain
    (see train/cpu.py for the measurements)."""
    import torch

    if setting != "auto":
        return bool(setting)
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device_type == "cpu" and params >= BF16_MIN_PARAMS and cpu_has_bf16()


def _use_packing(setting, kind: str, device_type: str) -> bool:
    if kind != "causal":
        if setting is True:
            raise ValueError(
                "packing=True is for causal students; T5 batches are length-grouped instead"
            )
        return False
    return device_type == "cuda" if setting == "auto" else bool(setting)


def train_adapter(
    dataset_dir: str | os.PathLike,
    student: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    lora: LoraConfig | None = None,
    train: TrainConfig | None = None,
    predictors: list[str] | None = None,
    name: str = "adapter",
    progress: bool = True,
) -> TrainResult:
    """Trains on ``dataset_dir`` (rows of ``predictors``, or all) and exports to ``out_dir/adapter``.

    Resumes from the newest checkpoint in ``out_dir/checkpoints`` when this same run (same
    dataset, rows, student and settings) made it; another run's checkpoints are set aside
    (``train/resume.py``).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    lora = lora or LoraConfig()
    train = train or TrainConfig()
    out_dir = Path(out_dir)
    data, dataset_manifest = load_dataset_dir(dataset_dir)
    splits = {s: data[s] for s in ("train", "validation")}
    if predictors is not None:
        unknown = sorted(set(predictors) - set(dataset_manifest.predictors))
        if unknown:
            raise ValueError(
                f"predictors {unknown} are not in the dataset; it has {dataset_manifest.predictors}"
            )
        splits = {s: d.filter(lambda r: r["predictor"] in predictors) for s, d in splits.items()}
    if len(splits["train"]) == 0:
        raise ValueError(
            f"the training split of {dataset_dir} is empty"
            + (f" for predictors {predictors}" if predictors else "")
            + "; bootstrap more traces or lower the threshold"
        )

    # cpu=True on GPU-less machines also lets `accelerate launch --multi_gpu --num_processes N`
    # run N CPU processes on gloo (accelerate only picks MULTI_CPU when told it is on CPU).
    accelerator = Accelerator(
        gradient_accumulation_steps=train.grad_accum,
        mixed_precision="no",
        cpu=not torch.cuda.is_available(),
    )
    set_seed(train.seed)
    device_type = accelerator.device.type
    loaded = load_student(student)
    bf16 = _use_bf16(train.bf16, device_type, loaded.model.num_parameters())
    model, tokenizer, kind = loaded.model, loaded.tokenizer, loaded.kind
    vocab_before = model.get_input_embeddings().weight.shape[0]

    targets: list[str] = []
    if train.full_finetune:
        servable = check_servable(kind, r=0, target_modules=[], full_finetune=True)
    else:
        targets = _resolve_targets(model, loaded.family, lora)
        servable = check_lora_config(kind, lora, targets)
        if kind == "causal" and lora.require_servable and not servable.vllm:
            raise ValueError(
                f"LoRA config is {servable}; fix it, or set lora.require_servable=False to train anyway"
            )
        from peft import get_peft_model

        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = get_peft_model(model, _peft_config(lora, kind, targets))
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    features = {}
    reports = {}
    for split, rows in splits.items():
        features[split], reports[split] = tokenize_rows(
            rows,
            tokenizer,
            kind=kind,
            max_length=train.max_length,
            max_target_length=train.max_target_length,
        )
        if reports[split].targets_too_long:
            log.warning(
                "%s: %d of %d rows dropped because the target alone exceeds max_target_length=%d "
                "or max_length=%d (targets are never cut)",
                split,
                reports[split].targets_too_long,
                reports[split].rows,
                train.max_target_length,
                train.max_length,
            )
    if not features["train"]:
        raise ValueError(
            f"every training row was dropped by truncation limits: {reports['train'].to_dict()}"
        )

    packing = _use_packing(train.packing, kind, device_type)
    collate = collate_padding_free if packing else collate_padded
    pad_id = tokenizer.pad_token_id

    def loader(split: str, epoch: int, shuffle: bool = True) -> DataLoader:
        rows = features[split]
        lengths = [len(f["input_ids"]) for f in rows]
        if shuffle:
            batches = length_grouped_batches(
                lengths,
                train.batch_size,
                seed=train.seed,
                epoch=epoch,
                group_by_length=train.group_by_length,
            )
        else:
            order = sorted(range(len(rows)), key=lambda i: lengths[i])
            batches = [
                order[i : i + train.batch_size] for i in range(0, len(order), train.batch_size)
            ]
        return DataLoader(
            rows,
            batch_sampler=batches,
            collate_fn=lambda fs: collate(fs, pad_id, kind),
            num_workers=train.num_workers,
        )

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=train.learning_rate, weight_decay=train.weight_decay
    )
    batches_per_epoch = len(accelerator.prepare(loader("train", 0)))
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / train.grad_accum))
    total_steps = train.max_steps or max(1, math.ceil(steps_per_epoch * train.epochs))
    scheduler = get_scheduler(
        train.lr_scheduler,
        optimizer,
        num_warmup_steps=int(total_steps * train.warmup_ratio),
        num_training_steps=total_steps,
    )
    # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper steps it
    # once per process, which would end the schedule early in a multi-process run.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    student_hash = model_hash(loaded.name)
    fingerprint = run_fingerprint(
        dataset_hash=dataset_manifest.content_hash,
        predictors=list(predictors or dataset_manifest.predictors),
        student_hash=student_hash,
        train=train,
        lora=None if train.full_finetune else {**lora.model_dump(), "target_modules": targets},
        bf16=bf16,
        packing=packing,
    )
    state: dict[str, Any] = {
        "global_step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "tokens": 0,
        "elapsed_s": 0.0,
        "fingerprint": fingerprint,  # a checkpoint resumes only the run that made it
    }
    checkpoint = resumable_checkpoint(
        accelerator, out_dir, _latest_checkpoint(out_dir), fingerprint
    )
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        log.info("resuming from %s (step %d)", checkpoint, state["global_step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    eval_every = train.eval_every or steps_per_epoch
    save_every = train.save_every or steps_per_epoch

    def log_event(event: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(event) + "\n")

    def validation_loss() -> float | None:
        if not features["validation"]:
            return None
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            for batch in accelerator.prepare(loader("validation", 0, shuffle=False)):
                tokens = int((batch["labels"] != -100).sum())
                total += float(model(**batch).loss) * tokens
                count += tokens
        model.train()
        return total / max(count, 1)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=state["global_step"],
        desc=f"Train {name}",
        dynamic_ncols=True,
        disable=not progress or not accelerator.is_main_process,
    )
    model.train()
    window_loss, window_batches = 0.0, 0
    start = time.perf_counter() - state["elapsed_s"]
    last_val: float | None = None
    micro = 0
    # CPU threads: chosen once per run (see train/cpu.py), reused on resume.
    if device_type != "cpu":
        threads = contextlib.nullcontext()
    else:
        if not (train.num_threads == "auto" and state.get("num_threads")):
            state["num_threads"] = choose_threads(train.num_threads)
        threads = cpu_threads(state["num_threads"])
        log.info("training on %d CPU thread(s)", state["num_threads"])
    with threads:
        while state["global_step"] < total_steps:
            epoch = state["epoch"]
            epoch_loader = accelerator.prepare(loader("train", epoch))
            skip = state["batch_in_epoch"]
            if skip:
                epoch_loader = accelerator.skip_first_batches(epoch_loader, skip)
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                        loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, train.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro += 1
                state["batch_in_epoch"] += 1
                mask = batch.get("attention_mask")
                state["tokens"] += (
                    int(mask.sum()) if mask is not None else batch["input_ids"].numel()
                )
                window_loss += float(loss.detach())
                window_batches += 1
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                bar.update(1)
                if step % train.logging_steps == 0 or step == total_steps:
                    elapsed = time.perf_counter() - start
                    event = {
                        "step": step,
                        "epoch": epoch,
                        "loss": window_loss / window_batches,
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": state["tokens"] / max(elapsed, 1e-9),
                    }
                    log_event(event)
                    bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
                    window_loss, window_batches = 0.0, 0
                if step % eval_every == 0 or step == total_steps:
                    last_val = validation_loss()
                    if last_val is not None:
                        log_event({"step": step, "epoch": epoch, "val_loss": last_val})
                if step % save_every == 0 and step < total_steps:
                    state["elapsed_s"] = time.perf_counter() - start
                    _save_checkpoint(accelerator, out_dir, state, train.save_total_limit)
                if step >= total_steps:
                    break
            else:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                continue
            break
        bar.close()
    elapsed = time.perf_counter() - start
    metrics = {
        "steps": state["global_step"],
        "final_train_loss": _last(log_path, "loss"),
        "final_val_loss": last_val,
        "tokens": state["tokens"],
        "tokens_per_s": state["tokens"] / max(elapsed, 1e-9),
        "elapsed_s": elapsed,
        "rows": {s: r.to_dict() for s, r in reports.items()},
        "bf16": bf16,
        "packing": packing,
        "num_processes": accelerator.num_processes,
        "num_threads": state.get("num_threads"),
    }
    adapter_dir = out_dir / "adapter"
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if unwrapped.get_input_embeddings().weight.shape[0] != vocab_before:
        raise RuntimeError(
            "the student's vocabulary changed during training; this must never happen"
        )
    manifest = AdapterManifest(
        name=name,
        kind=kind,
        method="full" if train.full_finetune else "lora",
        base_model=str(loaded.name),
        base_model_hash=student_hash,
        dataset_hash=dataset_manifest.content_hash,
        predictors=list(predictors or dataset_manifest.predictors),
        train_config=train.model_dump(),
        lora_config=None
        if train.full_finetune
        else {**lora.model_dump(), "target_modules": targets},
        metrics=metrics,
        servable={"vllm": servable.vllm, "reasons": servable.reasons},
    )
    if accelerator.is_main_process:
        tmp = out_dir / ".adapter-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp)
        if train.full_finetune:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp, adapter_dir)
        if not servable.vllm:
            log.warning("adapter %s is %s", adapter_dir, servable)
    accelerator.wait_for_everyone()
    manifest = AdapterManifest(**json.loads((adapter_dir / "manifest.json").read_text()))
    return TrainResult(adapter_dir, manifest, metrics)


def _last(log_path: Path, key: str) -> float | None:
    if not log_path.exists():
        return None
    value = None
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        if key in event:
            value = event[key]
    return value
