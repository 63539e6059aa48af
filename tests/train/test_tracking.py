"""train.report_to: a few steps of a tiny student, read back from TensorBoard's event files,
an MLflow store and a wandb offline run with each library's own reader."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.resume import run_fingerprint
from apprentice.train.sft import train_adapter
from apprentice.train.tracking import Tracking, tracker_params

QUICK = dict(max_steps=4, batch_size=8, learning_rate=1e-3, logging_steps=1, eval_every=2)


def _log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_logged_number_and_the_runs_settings(
    demo_dataset, tiny_causal, tmp_path
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    train = TrainConfig(**QUICK, report_to=["tensorboard"])
    result = train_adapter(
        demo_dataset, tiny_causal, tmp_path, lora=LoraConfig(r=8), train=train, progress=False
    )
    (run,) = (tmp_path / "tracking" / "apprentice").iterdir()  # the run's own folder
    assert re.fullmatch(r"adapter-\d{8}-\d{6}", run.name)
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "lr", "tokens_per_s", "step_tokens_per_s", "val_loss", "epoch"} <= set(scalars)
    log = _log(tmp_path)
    losses = [(e["step"], e["loss"]) for e in log if "loss" in e]
    assert [(s.step, s.value) for s in events.Scalars("loss")] == [
        (step, pytest.approx(loss, rel=1e-6)) for step, loss in losses
    ]
    assert [s.step for s in events.Scalars("val_loss")] == [2, 4]
    assert [s.value for s in events.Scalars("val_loss")] == pytest.approx(
        [e["val_loss"] for e in log if "val_loss" in e], rel=1e-6
    )
    assert [s.value for s in events.Scalars("lr")] == pytest.approx(
        [e["lr"] for e in log if "lr" in e]
    )
    assert all(s.value > 0 for s in events.Scalars("step_tokens_per_s"))

    # add_hparams writes the hyperparameters into a run folder of their own
    (hparams_run,) = {p.parent for p in run.glob("*/events.*")}
    hp_events = EventAccumulator(str(hparams_run))
    hp_events.Reload()
    content = hp_events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    manifest = result.manifest
    assert hparams["dataset_hash"].string_value == manifest.dataset_hash
    assert hparams["base_model_hash"].string_value == manifest.base_model_hash
    assert hparams["train.learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["lora.r"].number_value == 8
    assert hparams["lora.target_modules"].string_value.startswith("q_proj")
    assert hparams["adapter"].string_value == "adapter"


def test_mlflow_file_store_gets_metrics_params_and_a_run_named_after_the_adapter(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    import mlflow

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores else
    train = TrainConfig(**QUICK, report_to=["mlflow"], tracking_project="tickets")
    result = train_adapter(
        demo_dataset, tiny_causal, tmp_path / "out", train=train, name="classify", progress=False
    )
    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("tickets")
    (run,) = client.search_runs([experiment.experiment_id])
    assert re.fullmatch(r"classify-\d{8}-\d{6}", run.info.run_name)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dataset_hash"] == result.manifest.dataset_hash
    assert params["base_model_hash"] == result.manifest.base_model_hash
    assert params["train.max_steps"] == "4" and params["method"] == "lora"
    history = client.get_metric_history(run.info.run_id, "loss")
    log = _log(tmp_path / "out")
    assert [(m.step, m.value) for m in history] == [
        (e["step"], pytest.approx(e["loss"])) for e in log if "loss" in e
    ]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [2, 4]
    assert mlflow.active_run() is None


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def _logged(log: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` in the training log file ``log``."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [(e["step"], pytest.approx(e[key], rel=1e-6)) for e in events if key in e]


def test_each_training_run_is_a_tensorboard_run_of_its_own_in_a_shared_folder(
    demo_dataset, tiny_causal, tmp_path
):
    """Two adapters of one run (multitask: false) and a retraining of one of them, all
    tracked into one tracking_dir: three TensorBoard runs, each with only its own curve.
    Before, all three wrote into <tracking_dir>/apprentice/, which TensorBoard shows as one
    run with every step logged three times."""
    pytest.importorskip("tensorboard")
    shared = str(tmp_path / "tb")
    train = TrainConfig(**QUICK, report_to=["tensorboard"], tracking_dir=shared)
    for name in ("classify", "reply"):
        train_adapter(
            demo_dataset, tiny_causal, tmp_path / name, train=train, name=name, progress=False
        )
    first = {run.name: run for run in (tmp_path / "tb" / "apprentice").iterdir()}
    assert sorted(n.split("-")[0] for n in first) == ["classify", "reply"]
    retrain = train.model_copy(update={"learning_rate": 2e-3})  # another training run
    train_adapter(
        demo_dataset,
        tiny_causal,
        tmp_path / "classify",
        train=retrain,
        name="classify",
        progress=False,
    )
    runs = {run.name: run for run in (tmp_path / "tb" / "apprentice").iterdir()}
    (again,) = set(runs) - set(first)
    assert again.startswith("classify-") and len(runs) == 3
    (stale_log,) = (tmp_path / "classify" / ".stale").glob("train_log.*.jsonl")
    logs = {
        again: tmp_path / "classify" / "train_log.jsonl",  # the retraining's
        next(n for n in first if n.startswith("classify")): stale_log,  # set aside by it
        next(n for n in first if n.startswith("reply")): tmp_path / "reply" / "train_log.jsonl",
    }
    for name, run in runs.items():
        logged = _logged(logs[name], "loss")
        assert _scalars(run, "loss") == logged  # steps 1..4 once: nobody else's
        assert [step for step, _ in logged] == [1, 2, 3, 4]


def test_a_resumed_training_run_continues_its_tensorboard_run(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    from apprentice.train import sft

    saved = sft.save_checkpoint

    def save_then_die(*args, **kwargs):
        saved(*args, **kwargs)
        raise RuntimeError("killed after the checkpoint")

    train = TrainConfig(**QUICK, save_every=2, report_to=["tensorboard"])
    monkeypatch.setattr(sft, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train_adapter(demo_dataset, tiny_causal, tmp_path, train=train, progress=False)
    monkeypatch.setattr(sft, "save_checkpoint", saved)
    # A real resume starts seconds later. Within one second, TensorBoard can order the two
    # event files wrongly: their names are <time s>.<host>.<pid>.<writer number>, compared as
    # text, so writer 10 sorts before writer 9; it then reads steps 1-2 after 3-4 and drops
    # 3-4 as orphaned. (This test failed so when it ran after the other trackers' tests.)
    time.sleep(1.1)
    train_adapter(demo_dataset, tiny_causal, tmp_path, train=train, progress=False)
    (run,) = (tmp_path / "tracking" / "apprentice").iterdir()
    assert [step for step, _ in _scalars(run, "loss")] == [1, 2, 3, 4]
    assert _scalars(run, "loss") == _logged(tmp_path / "train_log.jsonl", "loss")


def _wandb_records(run_dir: Path) -> list[dict]:
    """The records of a run's .wandb file as wandb's own reader prints them (one JSON object
    a line: run, config, history, exit, ...)."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_wandb_offline_run_gets_every_logged_number_and_the_runs_settings(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    pytest.importorskip("wandb")
    # offline: no network, no API key, no login; wandb's own settings and caches stay here
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    train = TrainConfig(**QUICK, report_to=["wandb"], tracking_project="tickets")
    out = tmp_path / "out"
    result = train_adapter(
        demo_dataset, tiny_causal, out, train=train, name="classify", progress=False
    )
    (run_dir,) = (out / "tracking" / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["display_name"].startswith("classify-") and run["project"] == "tickets"
    assert run["telemetry"]["feature"]["offline"] is True
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    manifest = result.manifest
    assert config["dataset_hash"] == manifest.dataset_hash
    assert config["base_model_hash"] == manifest.base_model_hash
    assert config["adapter"] == "classify" and config["method"] == "lora"
    assert config["train.max_steps"] == 4 and config["train.learning_rate"] == pytest.approx(1e-3)
    assert config["lora.target_modules"].startswith("q_proj")

    history = {
        r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"
    }
    log = _log(out)
    assert sorted(history) == [1, 2, 3, 4]
    for row in history.values():
        assert {"loss", "lr", "epoch", "tokens_per_s", "step_tokens_per_s"} <= set(row)
        assert row["step_tokens_per_s"] > 0
    assert [(s, history[s]["loss"]) for s in history] == [
        (e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in log if "loss" in e
    ]
    assert [history[s]["lr"] for s in history] == pytest.approx([e["lr"] for e in log if "lr" in e])
    assert [s for s in history if "val_loss" in history[s]] == [2, 4]
    assert [history[s]["val_loss"] for s in (2, 4)] == pytest.approx(
        [e["val_loss"] for e in log if "val_loss" in e], rel=1e-6
    )
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0]
    import wandb

    assert wandb.run is None  # the run was finished, not left open for the next adapter


def test_a_tracker_without_its_package_fails_before_training(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    train = TrainConfig(**QUICK, report_to=["wandb"])
    with pytest.raises(
        ValueError, match=r"names 'wandb', but .* pip install wandb .*apprentice\[tracking\]"
    ):
        train_adapter(demo_dataset, tiny_causal, tmp_path, train=train, progress=False)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_mlflow_without_a_tracking_uri_needs_the_full_package(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy"):
        pytest.skip("needs mlflow-skinny without SQLAlchemy")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train = TrainConfig(**QUICK, report_to=["mlflow"])
    with pytest.raises(ValueError, match=r"no MLFLOW_TRACKING_URI .* pip install mlflow"):
        train_adapter(demo_dataset, tiny_causal, tmp_path, train=train, progress=False)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_report_to_config():
    assert TrainConfig().report_to == []
    assert TrainConfig(report_to="tensorboard").report_to == ["tensorboard"]
    assert TrainConfig(report_to=["mlflow", "mlflow"]).report_to == ["mlflow"]
    with pytest.raises(ValidationError, match="comet"):
        TrainConfig(report_to=["comet"])
    # tracking changes what is reported, not what is learned: a finished adapter is reused
    plain, tracked = TrainConfig(), TrainConfig(report_to=["tensorboard"], tracking_dir="/x")
    same = dict(dataset_hash="d", predictors=["p"], student_hash="s", lora=None)
    assert run_fingerprint(train=plain, bf16=False, packing=False, **same) == run_fingerprint(
        train=tracked, bf16=False, packing=False, **same
    )


def test_tracker_params_are_flat_and_plain():
    record = {"a": {"b": 1, "c": [1, "x"], "d": {"e": None}}, "f": True}
    assert tracker_params(record) == {"a.b": 1, "a.c": "1,x", "a.d.e": "None", "f": True}


def test_a_tracker_that_fails_to_start_leaves_no_mlflow_uri_behind(tmp_path, monkeypatch):
    # start() points MLflow at the tracking folder for this run only; if the tracker run
    # never opens, nothing will close it, so the process's setting must go back at once.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    class TrackingServerDown:  # an Accelerator whose trackers fail to start
        is_main_process = True

        def init_trackers(self, *args, **kwargs):
            raise RuntimeError("tracking server down")

    tracking = Tracking(TrainConfig(report_to=["mlflow"]), tmp_path)
    tracking.accelerator = TrackingServerDown()
    with pytest.raises(RuntimeError, match="server down"):
        tracking.start("multitask", {"train": {"seed": 0}})
    assert "MLFLOW_TRACKING_URI" not in os.environ
