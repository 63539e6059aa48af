"""The trainer's data: the rows to train on, their tokens, and the batches of each epoch.

Batches are a pure function of (seed, epoch) (``batching.py``), so a resumed run skips
exactly the batches it already trained on.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from apprentice.dataset.build import load_dataset_dir
from apprentice.dataset.tokenize import tokenize_rows
from apprentice.formats.prompt import PromptTemplate
from apprentice.train.batching import collate_padded, collate_padding_free, length_grouped_batches
from apprentice.train.config import TrainConfig

__all__ = ["SPLITS", "TrainingRows", "batch_loader", "load_rows", "row_limit", "tokenize_splits"]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


@dataclass
class TrainingRows:
    """The rows of one training run, before tokenizing."""

    splits: dict[str, Any]  # split name -> datasets.Dataset
    dataset_hash: str
    predictors: list[str]  # whose rows these are (all the dataset's when none were named)
    template: PromptTemplate = field(default_factory=PromptTemplate)  # the dataset's


def load_rows(dataset_dir: str | os.PathLike, predictors: list[str] | None) -> TrainingRows:
    """The train and validation rows of ``predictors`` (or all); refuses an empty train split."""
    data, manifest = load_dataset_dir(dataset_dir)
    splits = {s: data[s] for s in SPLITS}
    if predictors is not None:
        unknown = sorted(set(predictors) - set(manifest.predictors))
        if unknown:
            raise ValueError(
                f"predictors {unknown} are not in the dataset; it has {manifest.predictors}"
            )
        wanted = set(predictors)
        splits = {
            s: d.filter(lambda p: p in wanted, input_columns="predictor") for s, d in splits.items()
        }
    if len(splits["train"]) == 0:
        raise ValueError(
            f"the training split of {dataset_dir} is empty"
            + (f" for predictors {predictors}" if predictors else "")
            + "; bootstrap more traces or lower the threshold"
        )
    return TrainingRows(
        splits,
        manifest.content_hash,
        list(predictors or manifest.predictors),
        PromptTemplate.from_config(manifest.template),
    )


def row_limit(train: TrainConfig, context: int, student: str) -> int:
    """The tokens a training row may hold: ``train.max_length``, or the student's context when
    that is smaller and max_length was left at its default. A max_length set above the
    context is refused: the engine serving the student refuses prompts beyond it, so rows
    that long would teach a prompt that is never served."""
    if train.max_length <= context:
        return train.max_length
    if "max_length" in train.model_fields_set:
        raise ValueError(
            f"train.max_length={train.max_length} is above the context of student {student!r} "
            f"({context} tokens, which serving holds prompts to): set train.max_length to at "
            f"most {context}"
        )
    return context


def tokenize_splits(
    rows: TrainingRows, tokenizer: Any, kind: str, train: TrainConfig, max_length: int
) -> tuple[dict[str, list], dict[str, Any]]:
    """Token ids per split, and per split a report of the rows dropped for length."""
    features, reports = {}, {}
    for split, dataset in rows.splits.items():
        features[split], reports[split] = tokenize_rows(
            dataset,
            tokenizer,
            kind=kind,
            max_length=max_length,
            max_target_length=train.max_target_length,
            template=rows.template,
        )
        report = reports[split]
        if report.targets_too_long or report.prompts_too_long:
            log.warning(
                "%s: %d of %d rows dropped (never cut): %d with a target above "
                "max_target_length=%d, %d longer than max_length=%d",
                split,
                report.targets_too_long + report.prompts_too_long,
                report.rows,
                report.targets_too_long,
                train.max_target_length,
                report.prompts_too_long,
                max_length,
            )
    if not features["train"]:
        raise ValueError(
            f"every training row was dropped by truncation limits: {reports['train'].to_dict()}"
        )
    return features, reports


def batch_loader(
    features: list[dict[str, list[int]]],
    train: TrainConfig,
    *,
    pad_id: int,
    kind: str,
    packing: bool,
    epoch: int,
    shuffle: bool = True,
):
    """A DataLoader over ``features``: the length-grouped, shuffled batches of ``epoch``, or
    (``shuffle=False``, for validation) the rows in length order."""
    from torch.utils.data import DataLoader

    lengths = [len(f["input_ids"]) for f in features]
    if shuffle:
        batches = length_grouped_batches(
            lengths,
            train.batch_size,
            seed=train.seed,
            epoch=epoch,
            group_by_length=train.group_by_length,
        )
    else:
        order = sorted(range(len(features)), key=lambda i: lengths[i])
        batches = [order[i : i + train.batch_size] for i in range(0, len(order), train.batch_size)]
    collate = collate_padding_free if packing else collate_padded
    return DataLoader(
        features,
        batch_sampler=batches,
        collate_fn=functools.partial(collate, pad_id=pad_id, kind=kind),
        num_workers=train.num_workers,
    )
