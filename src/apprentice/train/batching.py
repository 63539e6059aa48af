"""Batches for SFT: length-grouped index batches and the collators (padded or padding-free).

Hand-written rather than taken from a trainer: the batch order must be a pure function
of (seed, epoch) so a resumed run skips exactly the batches it already trained on, and
grouping by length inside large shuffled windows is what keeps padding low on CPU,
where padding-free batches are slower (no varlen attention kernel).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from apprentice.dataset.tokenize import IGNORE_INDEX

__all__ = ["collate_padded", "collate_padding_free", "length_grouped_batches"]


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
    window: int = 64,
) -> list[list[int]]:
    """Shuffled index batches; with grouping, each window of ``window * batch_size`` rows is
    sorted by length before it is cut into batches, and the batches are shuffled again."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate_padded(features: list[dict[str, list[int]]], pad_id: int, kind: str) -> dict[str, Any]:
    """Right-padded tensors; labels padded with IGNORE_INDEX."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        attention[row, :n] = 1
    if kind == "causal":
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            labels[row, : len(f["labels"])] = torch.tensor(f["labels"])
    else:
        target = max(len(f["labels"]) for f in features)
        labels = torch.full((len(features), target), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            labels[row, : len(f["labels"])] = torch.tensor(f["labels"])
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    _add_rows(batch, features)
    if kind == "causal":
        batch["use_cache"] = False  # training never needs the KV cache
    return batch


def collate_padding_free(
    features: list[dict[str, list[int]]], pad_id: int, kind: str
) -> dict[str, Any]:
    """Causal rows flattened into one sequence with restarting position ids (no padding).

    Attention kernels that understand packed sequences (flash-attention varlen; the
    sdpa/eager mask built from position ids) keep rows from attending to each other.
    Each row's first label is the prompt's IGNORE_INDEX, so no row learns to predict
    the next row's first token.
    """
    import torch

    if kind != "causal":
        raise ValueError("padding-free batches are for causal students only")
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for f in features:
        input_ids.extend(f["input_ids"])
        row_labels = list(f["labels"])
        row_labels[0] = IGNORE_INDEX
        labels.extend(row_labels)
        positions.extend(range(len(f["input_ids"])))
    batch = {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        # transformers detects packed rows from position ids only without a KV cache.
        "use_cache": False,
    }
    _add_rows(batch, features)
    return batch


def _add_rows(batch: dict[str, Any], features: list[dict[str, Any]]) -> None:
    """Rows tagged with their dataset index (validation) keep it as ``batch["rows"]``, so
    losses gathered from several processes can be de-duplicated (train/val_loss.py)."""
    if features and "row" in features[0]:
        import torch

        batch["rows"] = torch.tensor([f["row"] for f in features])
