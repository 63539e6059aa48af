"""Experiment tracking: a training run's metrics and settings sent to TensorBoard, MLflow or
Weights & Biases (``train.report_to``) through accelerate's trackers.

Off by default: with ``report_to`` empty the Accelerator gets no trackers and nothing here
runs. When on, the trainer's ``Tracking`` starts a tracker run before its loop (the run's
settings and hashes become its parameters), logs every event the trainer writes to
``train_log.jsonl``, and ends the run after the loop. accelerate sends all of it from the
main process only.

Where the output goes: ``train.tracking_dir``, by default ``<adapter out_dir>/tracking``.
Each training run is one tracker run named ``<adapter>-<start time>`` (``run_name``), as
TRL and accelerate name theirs: TensorBoard writes its event files to
``<tracking_dir>/<tracking_project>/<run name>/``, so the adapters of one recipe (one per
predictor group) and each retraining of an adapter are runs of their own even in a shared
``tracking_dir`` (TensorBoard shows every folder of event files as one run, and mixes what
two trainings write into one). A run resumed from its checkpoint keeps its name, so its
curves continue in the same folder. MLflow logs to ``MLFLOW_TRACKING_URI`` when that is
set (a server, or any store MLflow accepts), else to a SQLite database
``<tracking_dir>/mlflow.db``, in experiment ``tracking_project``, one MLflow run per training
run under the same name (a resumed one is a new MLflow run under its old name); wandb
writes its run to ``<tracking_dir>/wandb/`` and syncs it as wandb itself is set up to
(``WANDB_MODE=offline``: no network or login, and ``wandb sync`` uploads the run later).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "TRACKER_PACKAGES",
    "Tracking",
    "check_trackers",
    "tracker_params",
    "tracking_dir",
]

# tracker -> (module it imports, the pip package that installs it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
_MLFLOW_URI = "MLFLOW_TRACKING_URI"


def check_trackers(train: Any) -> None:
    """Refuses, before anything trains, a tracker in ``train.report_to`` whose package is
    not installed (accelerate would drop it without a word)."""
    for name in train.report_to:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"train.report_to names {name!r}, but its package is not installed: "
                f"pip install {package} (apprentice's extra installs every tracker: "
                f"pip install 'apprentice[tracking]'), or take {name!r} out of train.report_to"
            )
    # Without a tracking URI the run goes to a SQLite database, which mlflow-skinny cannot open.
    if (
        "mlflow" in train.report_to
        and importlib.util.find_spec("sqlalchemy") is None
        and _mlflow_uri_unset()
    ):
        raise ValueError(
            "train.report_to names 'mlflow' and no MLFLOW_TRACKING_URI is set, so the run "
            "would be logged to a SQLite database in train.tracking_dir, which needs the "
            "full MLflow package: pip install mlflow (or set MLFLOW_TRACKING_URI to your "
            "tracking server)"
        )


def tracking_dir(train: Any, out_dir: Path) -> Path:
    """Where the trackers write: ``train.tracking_dir``, or ``out_dir/tracking``."""
    return Path(train.tracking_dir) if train.tracking_dir else Path(out_dir) / "tracking"


def tracker_params(record: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """Nested settings as flat ``a.b`` keys with values every tracker stores (lists and
    None as text), e.g. ``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in tracker_params(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(str(v) for v in value)
        else:
            flat[key] = str(value)
    return flat


class Tracking:
    """The trackers of one training run; every method does nothing when tracking is off.

    ``tracking = Tracking(train, out_dir)``; the ``Accelerator`` is made with
    ``tracking.accelerator_options()`` and handed over (``tracking.accelerator = ...``);
    then ``start``, ``log`` for each event, ``close``."""

    def __init__(self, train: Any, out_dir: Path) -> None:
        self.accelerator: Any = None
        self.report_to = list(train.report_to)
        self.project, self.folder = train.tracking_project, tracking_dir(train, out_dir)
        self.set_mlflow_uri = False
        self.tensorboard = None
        if "tensorboard" in self.report_to:
            from accelerate.tracking import TensorBoardTracker

            # Ours, not accelerate's by name, so that each training run gets a folder of its
            # own: its run_name (project/run) is set in start(), before the tracker starts
            # and joins it to the tracking folder.
            self.tensorboard = TensorBoardTracker(self.project, str(self.folder))

    def accelerator_options(self) -> dict[str, Any]:
        """``Accelerator`` keyword arguments for the trackers; none when tracking is off."""
        if not self.report_to:
            return {}
        trackers = [self.tensorboard if n == "tensorboard" else n for n in self.report_to]
        return {"log_with": trackers, "project_dir": str(self.folder)}

    def run_name(self, adapter: str) -> str:
        """A new training run's name: ``<adapter>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``...
        when a run of that name already wrote to this tracking folder."""
        stamp = f"{adapter}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, count = stamp, 1
        while (self.folder / self.project / name).exists():
            count += 1
            name = f"{stamp}-{count}"
        return name

    def start(self, run: str, record: dict[str, Any]) -> None:
        """Opens one tracker run named ``run`` (``run_name``; TensorBoard's folder
        ``<project>/<run>``) and stores ``record`` (settings, hashes) as its parameters.
        MLflow without ``MLFLOW_TRACKING_URI`` is pointed at the tracking folder's database
        for this run only (``close`` takes the setting away again)."""
        if not self.report_to:
            return
        if self.tensorboard is not None:
            self.tensorboard.run_name = f"{self.project}/{run}"
        if self.accelerator.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            if "mlflow" in self.report_to and _mlflow_uri_unset():
                os.environ[_MLFLOW_URI] = f"sqlite:///{self.folder.resolve() / 'mlflow.db'}"
                self.set_mlflow_uri = True
        try:
            self.accelerator.init_trackers(
                self.project,
                config=tracker_params(record),
                init_kwargs={
                    "mlflow": {"run_name": run},
                    "wandb": {"name": run, "dir": str(self.folder)},
                },
            )
        except BaseException:  # no tracker run to close: the process's setting goes back now
            self._restore_mlflow_uri()
            raise

    def log(self, event: dict[str, Any]) -> None:
        """Sends one training-log event (its numbers) to the trackers at its step."""
        if not self.report_to:
            return
        values = {k: v for k, v in event.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(values, step=event["step"])

    def close(self) -> None:
        """Closes the tracker runs (event files flushed, the MLflow run ended)."""
        if not self.report_to:
            return
        try:
            self.accelerator.end_training()
        finally:
            self._restore_mlflow_uri()

    def _restore_mlflow_uri(self) -> None:
        if self.set_mlflow_uri:
            os.environ.pop(_MLFLOW_URI, None)
            self.set_mlflow_uri = False


def _mlflow_uri_unset() -> bool:
    if os.environ.get(_MLFLOW_URI):
        return False
    if importlib.util.find_spec("mlflow") is None:
        return True
    import mlflow

    return not mlflow.is_tracking_uri_set()
