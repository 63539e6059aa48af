"""The train stage under accelerate's launcher, from the command line (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from apprentice.cli import main
from apprentice.run import Run
from apprentice.train.config import LauncherConfig
from apprentice.train.launch import accelerate_command

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/demo/causal.yaml"
SMALL = [
    "data.train.args.n=24",
    "data.dev.args.n=2",
    "bootstrap.concurrency=2",
    "train.max_steps=4",
    "train.save_every=2",
    "train.batch_size=4",
    "train.logging_steps=1",
    "eval.untrained=false",
]


def test_the_accelerate_command_runs_the_job_in_every_process(tmp_path):
    job = tmp_path / "launch.json"
    two = accelerate_command(LauncherConfig(kind="accelerate", num_processes=2), job)
    assert two[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert two[-3:] == ["-m", "apprentice.train", str(job)]
    assert "--multi_gpu" in two and two[two.index("--num_processes") + 1] == "2"
    one = accelerate_command(LauncherConfig(kind="accelerate", num_processes=1), job)
    assert "--multi_gpu" not in one  # accelerate refuses --multi_gpu with one process

    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    launcher = LauncherConfig(
        kind="accelerate", config_file=str(config), args=["--main_process_port", "29600"]
    )
    argv = accelerate_command(launcher, job)
    # The config file decides the processes and the backend; extra options pass through.
    assert argv[argv.index("--config_file") + 1] == str(config)
    assert "--multi_gpu" not in argv and "--num_processes" not in argv
    assert argv[-5:-3] == ["--main_process_port", "29600"]
    with pytest.raises(FileNotFoundError, match="accelerate config --config_file"):
        accelerate_command(LauncherConfig(kind="accelerate", config_file="missing.yaml"), job)


def _log_steps(adapter_dir: Path) -> list[int]:
    lines = (adapter_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.slow
def test_apprentice_train_runs_under_accelerate_launch_with_two_processes(tmp_path, capsys):
    root = tmp_path / "run"
    run = Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
    run.bootstrap()
    run.dataset()

    assert main(["train", str(root), "--num-processes", "2", "-q"]) == 0, capsys.readouterr()
    out = root / "adapters" / "multitask"
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    assert manifest["metrics"]["num_processes"] == 2 and manifest["metrics"]["steps"] == 4
    assert manifest["train_config"]["launcher"]["num_processes"] == 2
    assert manifest["predictors"] == ["classify", "extract"]
    # One writer: every step logged once, one adapter, no temporary folder left behind.
    assert _log_steps(out) == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter",
        "checkpoints",
        "launch.json",
        "train_log.jsonl",
    ]
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["fingerprint"]["processes"] == 2
    assert "launcher" in (root / "recipe.yaml").read_text()  # the run remembers it
    program = json.loads((root / "program.json").read_text())
    assert str(out / "adapter") in json.dumps(program)

    # The same stage in one process is another training run (batch_size is per process):
    # the two-process adapter is set aside, not passed off as this run's.
    assert main(["train", str(root), "--launcher", "none", "-q"]) == 0
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    assert manifest["metrics"]["num_processes"] == 1 and _log_steps(out) == [1, 2, 3, 4]
    assert len(list((out / ".stale").glob("adapter.*"))) == 1
