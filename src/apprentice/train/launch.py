"""Training under ``accelerate launch``: several GPUs or machines, FSDP or DeepSpeed.

With ``train.launcher.kind: accelerate``, ``train_adapter`` does not train in the calling
process. It writes its arguments to ``out_dir/launch.json`` and runs accelerate's own
launcher on them::

    python -m accelerate.commands.launch [--config_file F] [--num_processes N] [args] \\
        -m apprentice.train out_dir/launch.json

Each launched process runs ``train_adapter`` on that job (the training loop is written on
accelerate, so the processes share the work as the accelerate config says); the main
process writes the adapter. The caller waits and reads the adapter's manifest. The
launched processes find ``APPRENTICE_LAUNCHED`` set and train instead of launching again.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from apprentice.student_loading import StudentLoading
from apprentice.train.config import LauncherConfig, LoraConfig, TrainConfig

__all__ = [
    "LAUNCHED_ENV",
    "accelerate_command",
    "in_launched_process",
    "launch_training",
    "read_job",
]

log = logging.getLogger(__name__)

LAUNCHED_ENV = "APPRENTICE_LAUNCHED"
JOB_FILE = "launch.json"


def in_launched_process() -> bool:
    """Whether this process was started by ``launch`` (so it trains rather than launches)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def accelerate_command(launcher: LauncherConfig, job: Path) -> list[str]:
    """The ``accelerate launch`` command line that runs ``job`` in every process.

    Without a config file, the processes are ``num_processes`` (default: one per CUDA
    device) on this machine, with accelerate's multi-process mode (NCCL on GPUs, gloo on a
    CPU) when there are several; mixed precision stays off, as the trainer does bf16 itself.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launcher.config_file is not None:
        if not Path(launcher.config_file).is_file():
            raise FileNotFoundError(
                f"train.launcher.config_file: {launcher.config_file!r} does not exist; write one "
                "with `accelerate config --config_file PATH`"
            )
        command += ["--config_file", str(launcher.config_file)]
        if launcher.num_processes is not None:
            command += ["--num_processes", str(launcher.num_processes)]
    else:
        processes = launcher.num_processes or _cuda_devices() or 1
        command += ["--num_processes", str(processes), "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            command.append("--multi_gpu")  # accelerate's multi-process mode, GPUs or not
    return [*command, *launcher.args, "-m", "apprentice.train", str(job)]


def launch_training(
    dataset_dir: str | os.PathLike,
    student: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    lora: LoraConfig,
    train: TrainConfig,
    predictors: list[str] | None,
    name: str,
    progress: bool,
    loading: StudentLoading | None = None,
) -> Path:
    """Runs train_adapter on these arguments under accelerate, waits, and returns the
    adapter's folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "dataset_dir": str(dataset_dir),
        "student": str(student),
        "out_dir": str(out_dir),
        "lora": lora.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "predictors": predictors,
        "name": name,
        "progress": progress,
        "loading": (loading or StudentLoading()).model_dump(mode="json"),
        "log_level": logging.getLogger().getEffectiveLevel(),
    }
    job_file = out_dir / JOB_FILE
    job_file.write_text(json.dumps(job, indent=2))
    command = accelerate_command(train.launcher, job_file)
    # The launched processes import this same apprentice, wherever it was imported from.
    source = str(Path(__file__).resolve().parents[2])  # the folder holding apprentice/
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, LAUNCHED_ENV: "1", "PYTHONPATH": path}
    log.info("training under accelerate: %s", shlex.join(command))
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"training under accelerate launch failed with exit code {done.returncode} (its "
            f"output is above); the command was: {shlex.join(command)}. Run the same apprentice "
            "command again to resume from the last checkpoint"
        )
    return out_dir / "adapter"


def read_job(job_file: str | os.PathLike) -> dict[str, Any]:
    """train_adapter's arguments, as ``launch`` wrote them."""
    job = json.loads(Path(job_file).read_text())
    job["lora"] = LoraConfig.model_validate(job["lora"])
    job["train"] = TrainConfig.model_validate(job["train"])
    job["loading"] = StudentLoading.model_validate(job.get("loading") or {})
    return job


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
