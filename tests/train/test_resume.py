"""The trainer decides what it takes over from its out_dir: its own finished adapter, its own
checkpoint, never another run's (which is set aside) -- for every caller, the pipeline too."""

from __future__ import annotations

import json
from pathlib import Path

from apprentice.run import Run
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.sft import train_adapter

ROOT = Path(__file__).resolve().parents[2]
QUICK = TrainConfig(max_steps=2, batch_size=8, logging_steps=1)


def _losses(out: Path) -> list[int]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def test_a_finished_adapter_is_reused_by_its_own_run_and_set_aside_by_another(
    demo_dataset, tiny_causal, tmp_path, caplog
):
    out = tmp_path / "run"
    options = {"lora": LoraConfig(r=8), "progress": False}
    first = train_adapter(demo_dataset, tiny_causal, out, train=QUICK, **options)
    weights = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    again = train_adapter(demo_dataset, tiny_causal, out, train=QUICK, **options)
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == weights
    assert again.manifest == first.manifest and _losses(out) == [1, 2]  # nothing trained

    changed = QUICK.model_copy(update={"learning_rate": 1e-3})
    result = train_adapter(demo_dataset, tiny_causal, out, train=changed, **options)
    assert result.manifest.train_config["learning_rate"] == 1e-3
    assert _losses(out) == [1, 2]  # a fresh log: the old one went with the old adapter
    assert "train.learning_rate (0.0002, now 0.001)" in caplog.text and "not reused" in caplog.text
    stale = [p.name.split(".")[0] for p in (out / ".stale").iterdir()]
    assert sorted(stale) == ["adapter", "train_log"]  # set aside, never deleted


def test_the_train_stage_retrains_an_adapter_when_the_train_settings_change(tmp_path):
    small = [
        "data.train.args.n=12",
        "data.dev.args.n=2",
        "bootstrap.concurrency=2",
        "train.max_steps=2",
        "train.batch_size=4",
    ]
    root = tmp_path / "run"
    run = Run.open(ROOT / "recipes/demo/causal.yaml", overrides=small, run_dir=root, progress=False)
    run.bootstrap()
    run.dataset()
    run.train()
    again = Run.open(root, overrides=["train.learning_rate=0.01"], progress=False).train()
    manifest = json.loads((root / "adapters/multitask/adapter/manifest.json").read_text())
    # Before: the stage "ran" but kept the adapter trained at learning rate 0.002.
    assert again.status == "ran" and manifest["train_config"]["learning_rate"] == 0.01


def test_eval_every_is_part_of_what_a_run_learns_once_early_stopping_reads_it():
    from apprentice.train.resume import learning_settings

    plain = TrainConfig(eval_every=5).model_dump()
    assert "eval_every" not in learning_settings(plain)  # it only sets when a loss is logged
    early = TrainConfig(eval_every=5, early_stopping_patience=2).model_dump()
    assert learning_settings(early)["eval_every"] == 5  # it decides where the run stops
    assert "report_to" not in learning_settings(early) and "num_threads" not in learning_settings(
        early
    )
