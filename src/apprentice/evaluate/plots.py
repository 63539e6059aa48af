"""The report's plots (matplotlib's Figure on the Agg canvas: no display, no global backend)
and the training-log reader they draw from."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_loss", "plot_quality_cost", "read_train_log"]

log = logging.getLogger(__name__)


def read_train_log(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) losses by step; a step logged twice (a resumed run) keeps the
    later value, and a torn last line (a killed run) is skipped."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped: %.80s", path, number, line)
            continue
        if event.get("loss") is not None:
            train[int(event["step"])] = float(event["loss"])
        if event.get("val_loss") is not None:
            val[int(event["step"])] = float(event["val_loss"])
    return sorted(train.items()), sorted(val.items())


def plot_loss(path: Path, curves: dict[str, tuple[list, list]]) -> None:
    """Training (solid) and validation (dashed) loss per adapter; log scale when it spans 20x."""
    from matplotlib.figure import Figure  # Agg canvas, no display and no global backend
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values = []
    for i, (label, (train, val)) in enumerate(curves.items()):
        if train:
            steps, losses = [s for s, _ in train], [v for _, v in train]
            ax.plot(steps, losses, color=f"C{i}", label=f"{label} train")
        if val:
            steps, losses = [s for s, _ in val], [v for _, v in val]
            ax.plot(steps, losses, color=f"C{i}", ls="--", marker="o", ms=3, label=f"{label} val")
        values += [v for _, v in train + val]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="loss", title="Training and validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_quality_cost(
    path: Path,
    names: Sequence[str],
    scores: Sequence[float],
    costs: Sequence[float],
    cost_labels: Sequence[str],
) -> None:
    """Metric bars beside cost-per-1k-examples bars, one per system."""
    from matplotlib.figure import Figure

    colors = [f"C{i}" for i in range(len(names))]
    fig = Figure(figsize=(max(8.0, 2.2 * len(names)), 4.2), layout="constrained")
    quality, cost = fig.subplots(1, 2)
    bars = quality.bar(names, scores, color=colors)
    quality.bar_label(bars, labels=[f"{x:.3f}" for x in scores], padding=2)
    quality.set(ylabel="metric", title="Quality", ylim=(0, max([1.0, *scores]) * 1.15))
    bars = cost.bar(names, costs, color=colors)
    cost.bar_label(bars, labels=list(cost_labels), padding=2)
    cost.set(ylabel="USD per 1k examples", title="Cost", ylim=(0, max([*costs, 1e-9]) * 1.2))
    for ax in (quality, cost):
        ax.tick_params(axis="x", labelrotation=15)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
