"""Whether a checkpoint may be resumed: only by the training run that made it.

Every checkpoint's ``trainer_state.json`` carries the run's fingerprint: the dataset's
content hash, the rows used (predictors), the student's content hash, and every training
and LoRA setting that changes the result. A checkpoint with another fingerprint (or none,
from an older apprentice) is not resumed: its folder and training log are moved to
``out_dir/.stale/`` (never deleted) and training starts over, with a warning that names
what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from apprentice.files import set_aside

__all__ = ["fingerprint_difference", "resumable_checkpoint", "run_fingerprint"]

log = logging.getLogger(__name__)

# Settings that change how a run is carried out or reported, not what it learns.
_OPERATIONAL = frozenset(
    {"num_threads", "num_workers", "save_total_limit", "logging_steps", "eval_every", "save_every"}
)


def run_fingerprint(
    *,
    dataset_hash: str,
    predictors: list[str],
    student_hash: str,
    train: Any,
    lora: dict[str, Any] | None,
    bf16: bool,
    packing: bool,
) -> dict[str, Any]:
    """What decides a training run's result, as JSON."""
    return {
        "dataset": dataset_hash,
        "predictors": sorted(predictors),
        "student": student_hash,
        "train": {k: v for k, v in train.model_dump().items() if k not in _OPERATIONAL},
        "lora": lora,
        "bf16": bf16,
        "packing": packing,
    }


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


def resumable_checkpoint(
    accelerator: Any, out_dir: Path, latest: Path | None, fingerprint: dict[str, Any]
) -> Path | None:
    """``latest`` when this run made it; else None, once it is set aside."""
    if latest is None:
        return None
    saved = json.loads((latest / "trainer_state.json").read_text()).get("fingerprint")
    why = fingerprint_difference(saved, fingerprint)
    if why is None:
        return latest
    accelerator.wait_for_everyone()  # every process has decided before anything moves
    if accelerator.is_main_process:
        _set_aside_stale(out_dir, latest, why)
    accelerator.wait_for_everyone()
    return None


def _set_aside_stale(out_dir: Path, checkpoint: Path, why: str) -> None:
    """Moves the checkpoints and training log of another run to ``out_dir/.stale/``."""
    stale = out_dir / ".stale"
    moved = [
        set_aside(p, stale) for p in (checkpoint.parent, out_dir / "train_log.jsonl") if p.exists()
    ]
    log.warning(
        "checkpoint %s is from another training run and is not resumed: %s; training starts "
        "over, and the old checkpoints and log were moved to %s",
        checkpoint,
        why,
        ", ".join(str(p) for p in moved),
    )
