"""The demo recipe shrunk to seconds (8 tickets, a 1-layer student, 2 training steps): the
run the pipeline, eval and export tests train."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/demo/causal.yaml"
SHORT = [
    "data.train.args.n=8",
    "data.dev.args.n=2",
    "bootstrap.concurrency=2",
    "student.tiny.hidden_size=32",
    "student.tiny.num_layers=1",
    "train.max_steps=2",
    "train.batch_size=4",
]


def trained_run(root: Path, *overrides: str, stages=("bootstrap", "dataset", "train")) -> Path:
    """A run of the short demo in ``root`` (later overrides win), through ``stages``."""
    from apprentice.run import Run

    run = Run.open(RECIPE, overrides=[*SHORT, *overrides], run_dir=root, progress=False)
    for stage in stages:
        getattr(run, stage)()
    return root
