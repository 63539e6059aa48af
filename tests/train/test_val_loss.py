"""Validation loss across processes: per-row sums, gathered, each row counted once."""

from __future__ import annotations

import pytest

from apprentice.dataset.tokenize import IGNORE_INDEX
from apprentice.train.batching import collate_padded, collate_padding_free
from apprentice.train.val_loss import combine_row_losses, row_losses


def _features() -> list[dict]:
    """Five causal rows of different lengths: a masked prompt, then a target."""
    import random

    rng = random.Random(0)
    rows = []
    for i, (prompt, target) in enumerate([(5, 3), (8, 6), (4, 2), (9, 4), (6, 5)]):
        ids = [rng.randrange(3, 60) for _ in range(prompt + target)]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:], "row": i})
    return rows


@pytest.fixture(scope="module")
def model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _rows_of(model, batch) -> list[tuple[int, float, int]]:
    import torch

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "rows"}).logits
    return row_losses(logits, batch, shift=True)


def test_row_sums_add_up_to_the_models_own_loss_padded_and_padding_free(model):
    import torch

    features = _features()
    padded = collate_padded(features, pad_id=0, kind="causal")
    with torch.no_grad():
        own = float(model(**{k: v for k, v in padded.items() if k != "rows"}).loss)
    rows = _rows_of(model, padded)
    assert [r for r, _, _ in rows] == [0, 1, 2, 3, 4]
    assert [c for _, _, c in rows] == [3, 6, 2, 4, 5]
    assert combine_row_losses(rows) == pytest.approx(own, rel=1e-5)
    # The same rows packed into one padding-free sequence: the same per-row numbers.
    packed = _rows_of(model, collate_padding_free(features, pad_id=0, kind="causal"))
    assert [(r, c) for r, _, c in packed] == [(r, c) for r, _, c in rows]
    assert [s for _, s, _ in packed] == pytest.approx([s for _, s, _ in rows], rel=1e-4)


def test_two_processes_with_padding_duplicates_give_the_one_process_loss(model):
    features = _features()
    whole = combine_row_losses(_rows_of(model, collate_padded(features, 0, "causal")))
    # What accelerate does with 5 rows, batch size 2, 2 processes: the shards are evened
    # out by repeating rows from the start (row 0 is seen twice).
    shards = {0: [[0, 1], [4, 0]], 1: [[2, 3]]}
    gathered = []
    per_process = []
    for batches in shards.values():
        seen = []
        for batch in batches:
            seen += _rows_of(model, collate_padded([features[i] for i in batch], 0, "causal"))
        gathered += seen  # what accelerate's gather_object returns on every process
        per_process.append(combine_row_losses(seen))
    assert combine_row_losses(gathered) == pytest.approx(whole, rel=1e-5)
    # Before: each process logged the loss of its own shard, the duplicate counted.
    assert per_process[0] != pytest.approx(whole, rel=1e-3)
    assert combine_row_losses([]) is None
