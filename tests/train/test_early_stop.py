"""Early stopping: training ends after `early_stopping_patience` evaluations without a gain
in validation loss, and the best evaluation's weights are the ones saved."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from apprentice.train.config import TrainConfig
from apprentice.train.export import read_manifest
from apprentice.train.sft import train_adapter

# A constant learning rate: the first steps of a long run and of a short one are the same.
STEADY = {
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "logging_steps": 1,
    "eval_every": 2,
    "full_finetune": True,
}


def _val_events(out_dir: Path) -> list[dict]:
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if "val_loss" in e]


def test_a_plateau_stops_the_run_and_the_best_weights_are_kept(demo_dataset, tiny_causal, tmp_path):
    # A gain must exceed 1e6: after the first evaluation (step 2) none does, so with
    # patience 2 the run stops at the third evaluation (step 6) of the 40 steps asked for.
    train = TrainConfig(
        max_steps=40, early_stopping_patience=2, early_stopping_min_delta=1e6, **STEADY
    )
    stopped = train_adapter(demo_dataset, tiny_causal, tmp_path / "a", train=train, progress=False)
    metrics = read_manifest(stopped.adapter_dir).metrics
    assert (metrics["steps"], metrics["stopped_early_at"], metrics["best_step"]) == (6, 6, 2)
    events = _val_events(tmp_path / "a")
    assert [e["step"] for e in events] == [2, 4, 6]
    assert metrics["final_val_loss"] == events[0]["val_loss"]
    # The saved weights are step 2's: those of a run that stopped there by itself.
    short = train_adapter(
        demo_dataset,
        tiny_causal,
        tmp_path / "b",
        train=TrainConfig(max_steps=2, **STEADY),
        progress=False,
    )
    kept = load_file(stopped.adapter_dir / "model.safetensors")
    want = load_file(short.adapter_dir / "model.safetensors")
    assert kept.keys() == want.keys()
    assert all(torch.equal(kept[k], want[k]) for k in want)


def test_without_patience_every_step_runs(demo_dataset, tiny_causal, tmp_path):
    train = TrainConfig(max_steps=6, early_stopping_min_delta=1e6, **STEADY)
    result = train_adapter(demo_dataset, tiny_causal, tmp_path, train=train, progress=False)
    metrics = read_manifest(result.adapter_dir).metrics
    assert (metrics["steps"], metrics["stopped_early_at"]) == (6, None)
