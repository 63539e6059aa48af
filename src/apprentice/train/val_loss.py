"""The validation loss of a training run, the same number in one process or in several.

Under ``accelerate launch`` each process sees a shard of the validation rows, and
accelerate pads the shards to an equal number of batches by repeating rows. Each process
therefore computes the summed loss and target-token count of every row it saw, tagged
with the row's dataset index; the lists of all processes are gathered and a row seen twice
counts once. The result is the mean loss per target token over the whole validation set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apprentice.dataset.tokenize import IGNORE_INDEX

__all__ = ["combine_row_losses", "row_losses"]


def row_losses(logits: Any, batch: dict[str, Any], *, shift: bool) -> list[tuple[int, float, int]]:
    """``(row index, summed loss, target tokens)`` per row of ``batch`` (``batch["rows"]``
    holds the indices). A padding-free batch is one sequence of several rows, told apart by
    their restarting ``position_ids``. ``shift``: causal models predict the next token."""
    import torch
    import torch.nn.functional as F

    labels, rows = batch["labels"], batch["rows"]
    if "position_ids" in batch and labels.shape[0] == 1 and len(rows) > 1:
        segment = torch.cumsum(batch["position_ids"] == 0, dim=1) - 1  # padding-free
    else:
        segment = torch.arange(labels.shape[0]).unsqueeze(1).expand_as(labels)
    if shift:
        logits, labels, segment = logits[:, :-1], labels[:, 1:], segment[:, 1:]
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    segment = segment.reshape(-1).to(losses.device)
    counted = (labels.reshape(-1) != IGNORE_INDEX).to(losses.device)
    sums = torch.zeros(len(rows), dtype=losses.dtype, device=losses.device)
    counts = torch.zeros(len(rows), dtype=torch.long, device=losses.device)
    sums.index_add_(0, segment, losses * counted)
    counts.index_add_(0, segment, counted.long())
    return [
        (int(r), float(s), int(c))
        for r, s, c in zip(rows.tolist(), sums.tolist(), counts.tolist(), strict=True)
    ]


def combine_row_losses(gathered: Iterable[tuple[int, float, int]]) -> float | None:
    """Mean loss per target token over distinct rows (a repeated row index counts once);
    None when no row has a target token."""
    by_row = {row: (loss, count) for row, loss, count in gathered}
    tokens = sum(count for _, count in by_row.values())
    if not tokens:
        return None
    return sum(loss for loss, _ in by_row.values()) / tokens
