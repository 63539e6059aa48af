"""The training run: a LoRA (or full) finetune of a student on an SFT dataset.

``train_adapter`` reads top to bottom: load the rows, set up the model, tokenize, decide
what to take over from ``out_dir`` (``resume.py``), set up the optimizer, run the loop,
export. ``AdapterTrainer`` holds the run's state; each of its methods is one step.

Built as an accelerate loop rather than on transformers' Trainer: on the tiny CPU
students we test with, the loop's lean per-step path and length-grouped batches train
faster than TRL's SFTTrainer (see docs/benchmarks.md, scripts/bench_train.py), and it
keeps resume exact. accelerate gives the rest: gradient accumulation, bf16 autocast,
checkpoint state, and multi-GPU / multi-process runs through ``accelerate launch``
(``train.launcher``, see ``launch.py`` and docs/training.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.student_loading import StudentLoading
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.cpu import choose_threads, cpu_threads
from apprentice.train.data import (
    TrainingRows,
    batch_loader,
    load_rows,
    row_limit,
    tokenize_splits,
)
from apprentice.train.export import (
    AdapterManifest,
    check_lora_config,
    check_servable,
    read_manifest,
    write_manifest,
)
from apprentice.train.launch import in_launched_process, launch_training
from apprentice.train.model import (
    resolve_targets,
    slow_bf16_warning,
    use_bf16,
    use_packing,
    wrap_lora,
)
from apprentice.train.resume import check_out_dir, run_fingerprint, save_checkpoint
from apprentice.train.students import load_student, model_hash
from apprentice.train.tracking import Tracking, check_trackers
from apprentice.train.val_loss import combine_row_losses, row_losses

__all__ = ["AdapterTrainer", "TrainResult", "train_adapter"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    manifest: AdapterManifest
    metrics: dict[str, Any] = field(default_factory=dict)


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
    loading: StudentLoading | None = None,
) -> TrainResult:
    """Trains on ``dataset_dir`` (rows of ``predictors``, or all) and exports to ``out_dir/adapter``.
    ``loading`` says how the student is loaded (``student:`` revision, dtype, attention,
    4-bit, remote code).

    What this same run (same dataset, rows, student and settings) left in ``out_dir`` is
    taken over: its finished adapter is returned as it is, its newest checkpoint is
    resumed. Another run's files are set aside, never resumed (``resume.py``). With
    ``train.launcher.kind: accelerate`` the training runs under ``accelerate launch``.
    """
    lora = lora or LoraConfig()
    train = train or TrainConfig()
    check_trackers(train)
    if train.launcher.kind == "accelerate" and not in_launched_process():
        adapter_dir = launch_training(
            dataset_dir,
            student,
            out_dir,
            lora=lora,
            train=train,
            predictors=predictors,
            name=name,
            progress=progress,
            loading=loading,
        )
        return _finished(adapter_dir)
    rows = load_rows(dataset_dir, predictors)
    trainer = AdapterTrainer(out_dir, lora=lora, train=train, name=name, progress=progress)
    trainer.setup_model(student, loading)
    trainer.setup_data(rows)
    previous = check_out_dir(trainer.accelerator, trainer.out_dir, trainer.fingerprint())
    if previous.adapter is not None:
        log.info("%s: the adapter in %s is this run's, finished: reused", name, previous.adapter)
        return _finished(previous.adapter)
    trainer.setup_optimizer()
    trainer.load_checkpoint(previous.checkpoint)
    trainer.train()
    return trainer.export()


class AdapterTrainer:
    """One training run; ``train_adapter`` calls its steps in order."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        lora: LoraConfig,
        train: TrainConfig,
        name: str,
        progress: bool,
    ) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.out_dir = Path(out_dir)
        self.lora, self.train_config, self.name, self.progress = lora, train, name, progress
        # cpu=True on GPU-less machines also lets `accelerate launch --multi_gpu --num_processes N`
        # run N CPU processes on gloo (accelerate only picks MULTI_CPU when told it is on CPU).
        self.tracking = Tracking(train, self.out_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=train.grad_accum,
            mixed_precision="no",
            cpu=not torch.cuda.is_available(),
            **self.tracking.accelerator_options(),
        )
        self.tracking.accelerator = self.accelerator
        set_seed(train.seed)
        self.device_type = self.accelerator.device.type
        self.log_path = self.out_dir / "train_log.jsonl"
        self.state: dict[str, Any] = {}
        self.last_val: float | None = None

    # -- setup ------------------------------------------------------------------------------
    def setup_model(
        self, student: str | os.PathLike, loading: StudentLoading | None = None
    ) -> None:
        """Loads the student, checks the LoRA config (servable by vLLM unless told otherwise)
        and wraps the model with peft; a full finetune trains the model itself. A 4-bit
        base (``loading.load_in_4bit``, QLoRA) is prepared by peft for k-bit training."""
        lora, train = self.lora, self.train_config
        self.loading = loading or StudentLoading()
        if self.loading.load_in_4bit and train.full_finetune:
            raise ValueError(
                "student.load_in_4bit trains a LoRA adapter on a frozen 4-bit base, and "
                "train.full_finetune would update the 4-bit weights themselves: set one of "
                "them to false"
            )
        self.student = load_student(student, loading=self.loading)
        self.student_hash = model_hash(self.student.name, self.loading.revision)
        self.kind, self.tokenizer = self.student.kind, self.student.tokenizer
        model = self.student.model
        if self.loading.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train.gradient_checkpointing
            )
        self.bf16 = use_bf16(train.bf16, self.device_type, model.num_parameters())
        if warning := slow_bf16_warning(self.bf16, self.device_type):
            log.warning(warning)
        self.vocab_before = model.get_input_embeddings().weight.shape[0]
        self.targets: list[str] = []
        if train.full_finetune:
            self.servable = check_servable(self.kind, r=0, target_modules=[], full_finetune=True)
        else:
            self.targets = resolve_targets(model, self.student.family, lora)
            self.servable = check_lora_config(self.kind, lora, self.targets, model=model)
            if self.kind == "causal" and lora.require_servable and not self.servable.vllm:
                raise ValueError(
                    f"LoRA config is {self.servable}; fix it, or set lora.require_servable=False "
                    "to train anyway"
                )
            model = wrap_lora(model, lora, self.kind, self.targets)
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.model = model

    def setup_data(self, rows: TrainingRows) -> None:
        """Tokenizes the rows; causal students may pack rows into padding-free batches."""
        self.rows = rows
        from apprentice.model_context import context_length

        context = context_length(self.student.model.config, self.tokenizer)
        self.max_length = row_limit(self.train_config, context, self.student.name)
        self.features, self.reports = tokenize_splits(
            rows, self.tokenizer, self.kind, self.train_config, self.max_length
        )
        # Each validation row carries its index, so processes' losses are counted once each.
        validation = self.features.get("validation") or []
        self.features["validation"] = [{**f, "row": i} for i, f in enumerate(validation)]
        self.packing = use_packing(self.train_config.packing, self.kind, self.device_type)

    def fingerprint(self) -> dict[str, Any]:
        """What decides this run's result (``resume.run_fingerprint``)."""
        return run_fingerprint(
            dataset_hash=self.rows.dataset_hash,
            predictors=self.rows.predictors,
            student_hash=self.student_hash,
            student_loading=self.loading.changed(),
            train=self.train_config,
            lora=self._lora_record(),
            bf16=self.bf16,
            packing=self.packing,
            processes=self.accelerator.num_processes,
        )

    def setup_optimizer(self) -> None:
        """AdamW over the trainable weights and the learning-rate schedule, for the number
        of optimizer steps the run will take."""
        import torch
        from transformers import get_scheduler

        train = self.train_config
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.trainable, lr=train.learning_rate, weight_decay=train.weight_decay
        )
        batches_per_epoch = len(self.accelerator.prepare(self._loader("train", 0)))
        self.steps_per_epoch = max(1, math.ceil(batches_per_epoch / train.grad_accum))
        self.total_steps = train.max_steps or max(1, math.ceil(self.steps_per_epoch * train.epochs))
        self.scheduler = get_scheduler(
            train.lr_scheduler,
            optimizer,
            num_warmup_steps=int(self.total_steps * train.warmup_ratio),
            num_training_steps=self.total_steps,
        )
        # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper steps
        # it once per process, which would end the schedule early in a multi-process run.
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def load_checkpoint(self, checkpoint: Path | None) -> None:
        """Starts the run's state afresh, or from this run's ``checkpoint``."""
        self.state = {
            "global_step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "tokens": 0,
            "elapsed_s": 0.0,
            "fingerprint": self.fingerprint(),  # a checkpoint resumes only the run that made it
        }
        if checkpoint is not None:
            self.accelerator.load_state(str(checkpoint))
            self.state = json.loads((checkpoint / "trainer_state.json").read_text())
            log.info("resuming from %s (step %d)", checkpoint, self.state["global_step"])
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> None:
        """Micro-batches until ``total_steps`` optimizer steps; after each step, log, evaluate
        and checkpoint when they are due."""
        from apprentice.progress import progress_bar

        self.bar = progress_bar(
            self.total_steps,
            f"Train {self.name}",
            initial=self.state["global_step"],
            unit="steps",
            enabled=self.progress and self.accelerator.is_main_process,
        )
        self.model.train()
        self.window = [0.0, 0, 0]  # loss sum, micro-batches and tokens since the last log
        self.start = time.perf_counter() - self.state["elapsed_s"]
        self.window_start = time.perf_counter()
        # One tracker run per training run; a resumed run keeps its name (its checkpoint's)
        self.state.setdefault("tracking_run", self.tracking.run_name(self.name))
        self.tracking.start(self.state["tracking_run"], self._tracking_record())
        with self._threads(), contextlib.closing(self.tracking):
            while self.state["global_step"] < self.total_steps:
                for batch in self._epoch_batches():
                    self._train_micro_batch(batch)
                    if not self.accelerator.sync_gradients:
                        continue
                    self.state["global_step"] += 1
                    self.bar.update(1)
                    self._after_step()
                    if self.state["global_step"] >= self.total_steps:
                        break
                else:  # the epoch ran out before the run did
                    self.state["epoch"] += 1
                    self.state["batch_in_epoch"] = 0
            self.bar.close()
        self._restore_best()
        self.elapsed = time.perf_counter() - self.start

    def _epoch_batches(self):
        """This epoch's batches, past those a resumed run already trained on."""
        loader = self.accelerator.prepare(self._loader("train", self.state["epoch"]))
        skip = self.state["batch_in_epoch"]
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def _train_micro_batch(self, batch: dict[str, Any]) -> None:
        """Forward and backward; the optimizer steps when accelerate's accumulation says so."""
        import torch

        accelerator, train = self.accelerator, self.train_config
        with accelerator.accumulate(self.model):
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.trainable, train.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state["batch_in_epoch"] += 1
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.state["tokens"] += tokens
        self.window[0] += float(loss.detach())
        self.window[1] += 1
        self.window[2] += tokens

    def _after_step(self) -> None:
        train, step, total = self.train_config, self.state["global_step"], self.total_steps
        if step % train.logging_steps == 0 or step == total:
            now = time.perf_counter()
            event = {
                "step": step,
                "epoch": self.state["epoch"],
                "loss": self.window[0] / self.window[1],
                "lr": self.scheduler.get_last_lr()[0],
                "tokens_per_s": self.state["tokens"] / max(now - self.start, 1e-9),
                # this process's tokens over the steps since the last logged one
                "step_tokens_per_s": self.window[2] / max(now - self.window_start, 1e-9),
            }
            self._log_event(event)
            self.bar.set_postfix(
                loss=f"{event['loss']:.4f}",
                tok_s=f"{event['tokens_per_s']:.0f}",
                refresh=False,
            )
            self.window, self.window_start = [0.0, 0, 0], time.perf_counter()
        if step % (train.eval_every or self.steps_per_epoch) == 0 or step == total:
            self.last_val = self.evaluate()
            if self.last_val is not None:
                self._log_event(
                    {"step": step, "epoch": self.state["epoch"], "val_loss": self.last_val}
                )
                self._watch_plateau(step, self.last_val)
        if step % (train.save_every or self.steps_per_epoch) == 0 and step < total:
            self.state["elapsed_s"] = time.perf_counter() - self.start
            save_checkpoint(self.accelerator, self.out_dir, self.state, train.save_total_limit)

    def _watch_plateau(self, step: int, val_loss: float) -> None:
        """Early stopping: keeps the best evaluation's trainable weights (in memory) and
        ends the run after ``early_stopping_patience`` evaluations without improving. The
        validation loss is gathered from every process, so they all stop at the same step."""
        train = self.train_config
        if train.early_stopping_patience is None:
            return
        best = self.state.get("best_val_loss")
        if best is None or val_loss < best - train.early_stopping_min_delta:
            self.state.update(best_val_loss=val_loss, best_step=step, evals_without_gain=0)
            self.best_weights = {
                name: p.detach().to("cpu", copy=True)
                for name, p in self.accelerator.unwrap_model(self.model).named_parameters()
                if p.requires_grad
            }
            return
        self.state["evals_without_gain"] = self.state.get("evals_without_gain", 0) + 1
        if self.state["evals_without_gain"] >= train.early_stopping_patience:
            log.info(
                "early stop at step %d: validation loss %.4f, best %.4f at step %d",
                step,
                val_loss,
                best,
                self.state["best_step"],
            )
            self.state["stopped_early_at"] = step
            self.total_steps = step  # the loop ends after this step

    def _restore_best(self) -> None:
        """After an early stop, the weights of the best evaluation go back into the model
        (a run resumed after that evaluation kept no copy of them: its last weights stay)."""
        best = getattr(self, "best_weights", None)
        if self.state.get("stopped_early_at") is None or best is None:
            return
        import torch

        model = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in best:
                    p.copy_(best[name].to(p.device))
        self.last_val = self.state["best_val_loss"]

    def evaluate(self) -> float | None:
        """Mean loss per target token over the validation rows (None without any), over
        every process's shard, each row once (train/val_loss.py)."""
        import torch
        from accelerate.utils import gather_object

        if not self.features["validation"]:
            return None
        self.model.eval()
        seen = []
        autocast = torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.no_grad(), autocast:
            for batch in self.accelerator.prepare(self._loader("validation", 0, shuffle=False)):
                logits = self.model(**{k: v for k, v in batch.items() if k != "rows"}).logits
                seen += row_losses(logits, batch, shift=self.kind == "causal")
        self.model.train()
        return combine_row_losses(gather_object(seen))

    # -- export -----------------------------------------------------------------------------
    def export(self) -> TrainResult:
        """The main process writes ``out_dir/adapter`` (PEFT folder, or the whole model for a
        full finetune, + manifest.json) through a temporary folder, so it appears whole."""
        accelerator, train = self.accelerator, self.train_config
        adapter_dir = self.out_dir / "adapter"
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(self.model)
        if unwrapped.get_input_embeddings().weight.shape[0] != self.vocab_before:
            raise RuntimeError(
                "the student's vocabulary changed during training; this must never happen"
            )
        manifest = AdapterManifest(
            name=self.name,
            kind=self.kind,
            method="full" if train.full_finetune else "lora",
            base_model=str(self.student.name),
            base_model_hash=self.student_hash,
            base_model_options=self.loading.changed(),
            dataset_hash=self.rows.dataset_hash,
            predictors=self.rows.predictors,
            train_config=train.model_dump(),
            lora_config=self._lora_record(),
            metrics=self._metrics(),
            servable={"vllm": self.servable.vllm, "reasons": self.servable.reasons},
        )
        if accelerator.is_main_process:
            tmp = self.out_dir / ".adapter-tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            unwrapped.save_pretrained(tmp)
            if train.full_finetune:
                self.tokenizer.save_pretrained(tmp)
            write_manifest(tmp, manifest)
            if adapter_dir.exists():
                shutil.rmtree(adapter_dir)
            os.replace(tmp, adapter_dir)
            if not self.servable.vllm:
                log.warning("adapter %s is %s", adapter_dir, self.servable)
        accelerator.wait_for_everyone()
        return _finished(adapter_dir)

    def _metrics(self) -> dict[str, Any]:
        state, elapsed = self.state, self.elapsed
        return {
            "steps": state["global_step"],
            "final_train_loss": _last(self.log_path, "loss"),
            "final_val_loss": self.last_val,
            "tokens": state["tokens"],
            "tokens_per_s": state["tokens"] / max(elapsed, 1e-9),
            "elapsed_s": elapsed,
            "rows": {s: r.to_dict() for s, r in self.reports.items()},
            "bf16": self.bf16,
            "packing": self.packing,
            "num_processes": self.accelerator.num_processes,
            "num_threads": state.get("num_threads"),
            # early stopping (train.early_stopping_patience): None when it did not stop early
            "stopped_early_at": state.get("stopped_early_at"),
            "best_step": state.get("best_step"),
        }

    # -- helpers ----------------------------------------------------------------------------
    def _lora_record(self) -> dict[str, Any] | None:
        """The LoRA settings as trained (target modules resolved); None for a full finetune."""
        if self.train_config.full_finetune:
            return None
        return {**self.lora.model_dump(), "target_modules": self.targets}

    def _loader(self, split: str, epoch: int, shuffle: bool = True):
        return batch_loader(
            self.features[split],
            self.train_config,
            pad_id=self.tokenizer.pad_token_id,
            kind=self.kind,
            packing=self.packing,
            epoch=epoch,
            shuffle=shuffle,
        )

    def _log_event(self, event: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(event) + "\n")
        self.tracking.log(event)

    def _tracking_record(self) -> dict[str, Any]:
        """What the trackers store as the run's parameters: its settings and hashes, as the
        adapter's manifest records them."""
        return {
            "adapter": self.name,
            "kind": self.kind,
            "method": "full" if self.train_config.full_finetune else "lora",
            "base_model": str(self.student.name),
            "base_model_hash": self.student_hash,
            "dataset_hash": self.rows.dataset_hash,
            "predictors": self.rows.predictors,
            "bf16": self.bf16,
            "packing": self.packing,
            "num_processes": self.accelerator.num_processes,
            "train": self.train_config.model_dump(mode="json"),
            "lora": self._lora_record(),
        }

    def _threads(self):
        """CPU threads: chosen once per run (see train/cpu.py), reused on resume."""
        if self.device_type != "cpu":
            return contextlib.nullcontext()
        if not (self.train_config.num_threads == "auto" and self.state.get("num_threads")):
            self.state["num_threads"] = choose_threads(self.train_config.num_threads)
        log.info("training on %d CPU thread(s)", self.state["num_threads"])
        return cpu_threads(self.state["num_threads"])


def _finished(adapter_dir: Path) -> TrainResult:
    """The result of a finished run, read back from its adapter's manifest."""
    manifest = read_manifest(adapter_dir)
    return TrainResult(adapter_dir, manifest, manifest.metrics)


def _last(log_path: Path, key: str) -> float | None:
    if not log_path.exists():
        return None
    value = None
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        if key in event:
            value = event[key]
    return value
