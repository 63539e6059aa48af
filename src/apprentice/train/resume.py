"""Checkpoints, and what a training run may take over from the files in its ``out_dir``.

Every checkpoint's ``trainer_state.json`` carries the run's fingerprint: the dataset's
content hash, the rows used (predictors), the student's content hash, every training and
LoRA setting that changes the result, and the number of processes when there is more
than one. A finished adapter's manifest records the same facts. The trainer owns the
decision (``check_out_dir``), so every caller -- ``apprentice distill``, ``BootstrapFinetune``,
a script -- gets it:

- a finished adapter of this same run is used as it is (nothing is trained again);
- this run's newest checkpoint is resumed;
- another run's adapter, checkpoints and training log (or ones from an older apprentice,
  without a fingerprint) are never resumed: they are moved to ``out_dir/.stale/`` (never
  deleted), training starts over, and a warning names what differs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.files import set_aside
from apprentice.train.export import AdapterManifest, read_manifest

__all__ = [
    "OutDir",
    "learning_settings",
    "check_out_dir",
    "fingerprint_difference",
    "latest_checkpoint",
    "manifest_fingerprint",
    "run_fingerprint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

# Settings that change how a run is carried out or reported, not what it learns.
_OPERATIONAL = frozenset(
    {
        "num_threads",
        "num_workers",
        "save_total_limit",
        "logging_steps",
        "eval_every",
        "save_every",
        "launcher",  # the number of processes it starts is recorded on its own
        "report_to",
        "tracking_dir",
        "tracking_project",
    }
)


def learning_settings(train_config: dict[str, Any]) -> dict[str, Any]:
    """The training settings that change what a run learns: all but the operational ones.
    ``eval_every`` counts once early stopping reads it (it decides where the run stops)."""
    early = train_config.get("early_stopping_patience") is not None
    return {
        k: v
        for k, v in train_config.items()
        if k not in _OPERATIONAL or (early and k == "eval_every")
    }


def run_fingerprint(
    *,
    dataset_hash: str,
    predictors: list[str],
    student_hash: str,
    train: Any,
    lora: dict[str, Any] | None,
    bf16: bool,
    packing: bool,
    processes: int = 1,
    student_loading: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What decides a training run's result, as JSON."""
    train_config = train if isinstance(train, dict) else train.model_dump()
    fingerprint = {
        "dataset": dataset_hash,
        "predictors": sorted(predictors),
        "student": student_hash,
        "train": learning_settings(train_config),
        "lora": lora,
        "bf16": bf16,
        "packing": packing,
    }
    if student_loading:  # how the base was loaded (dtype, 4-bit, ...); none adds no key
        fingerprint["student_loading"] = student_loading
    if processes > 1:  # batch_size is per process; one process adds no key (older runs)
        fingerprint["processes"] = processes
    return fingerprint


def manifest_fingerprint(manifest: AdapterManifest) -> dict[str, Any]:
    """The fingerprint of the run that exported this adapter, read from its manifest."""
    return run_fingerprint(
        dataset_hash=manifest.dataset_hash,
        predictors=manifest.predictors,
        student_hash=manifest.base_model_hash,
        train=manifest.train_config,
        lora=manifest.lora_config,
        bf16=manifest.metrics.get("bf16"),
        packing=manifest.metrics.get("packing"),
        processes=manifest.metrics.get("num_processes") or 1,
        student_loading=manifest.base_model_options,
    )


def fingerprint_difference(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """What differs between a checkpoint's fingerprint and this run's, or None."""
    if not isinstance(saved, dict):
        return "the checkpoint records no fingerprint (made by an older apprentice)"
    differences = []
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key), now.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            differences += [
                f"{key}.{k} ({before.get(k)!r}, now {after.get(k)!r})"
                for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)
            ]
        elif before != after:
            differences.append(f"{key} ({before!r}, now {after!r})")
    return "; ".join(differences) or None


@dataclass
class OutDir:
    """What an earlier run left in ``out_dir`` that this run takes over."""

    adapter: Path | None = None  # finished by this same run: nothing to train
    checkpoint: Path | None = None  # this run's newest checkpoint: resume from it


def check_out_dir(accelerator: Any, out_dir: Path, fingerprint: dict[str, Any]) -> OutDir:
    """Decides, on every process alike, what this run takes over; sets aside the rest."""
    adapter = out_dir / "adapter"
    stale: list[tuple[str, list[Path], str]] = []  # (what, its files, what differs)
    if (adapter / "manifest.json").exists():
        why = fingerprint_difference(manifest_fingerprint(read_manifest(adapter)), fingerprint)
        if why is None:
            return OutDir(adapter=adapter)
        stale.append((f"adapter {adapter} is another training run's: not reused", [adapter], why))
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("fingerprint")
        why = fingerprint_difference(saved, fingerprint)
        if why is None:
            _set_aside_stale(accelerator, out_dir, stale)
            return OutDir(checkpoint=checkpoint)
        what = f"checkpoint {checkpoint} is from another training run and is not resumed"
        stale.append((what, [checkpoint.parent], why))
    if stale:  # the training log and tracker files go with the run that wrote them
        stale[-1][1].extend([out_dir / "train_log.jsonl", out_dir / "tracking"])
    _set_aside_stale(accelerator, out_dir, stale)
    return OutDir()


def _set_aside_stale(
    accelerator: Any, out_dir: Path, stale: list[tuple[str, list[Path], str]]
) -> None:
    """Moves another run's files to ``out_dir/.stale/``, with a warning naming what differs."""
    if not stale:
        return
    accelerator.wait_for_everyone()  # every process has decided before anything moves
    if accelerator.is_main_process:
        for what, paths, why in stale:
            moved = [str(set_aside(p, out_dir / ".stale")) for p in paths if p.exists()]
            log.warning(
                "%s: %s; training starts over, and the old files were moved to %s (to use "
                "them again, move them back and train with the settings they were made with)",
                what,
                why,
                ", ".join(moved),
            )
    accelerator.wait_for_everyone()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with its ``trainer_state.json``), or None."""
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator: Any, out_dir: Path, state: dict[str, Any], keep: int) -> None:
    """Writes ``checkpoints/step-N`` (accelerate state + ``trainer_state.json``, written last,
    so a checkpoint without it is incomplete) and keeps the newest ``keep``."""
    root = out_dir / "checkpoints"
    final = root / f"step-{state['global_step']}"
    tmp = root / f".tmp-step-{state['global_step']}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
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
