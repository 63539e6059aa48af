"""Tokenizing SFT rows with completion-only labels, on the prompt text that inference uses
too (``formats.render_prompt``: the student is trained on exactly the prompt it is served).

Truncation never cuts a target: a prompt that is too long loses tokens from its start
(the instructions and demos, never the inputs closest to the answer) and a row whose
target alone does not fit is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apprentice.formats.prompt import Kind, render_prompt

__all__ = ["IGNORE_INDEX", "TokenizeReport", "render_prompt", "tokenize_rows"]

IGNORE_INDEX = -100


@dataclass
class TokenizeReport:
    rows: int = 0
    kept: int = 0
    prompts_truncated: int = 0
    targets_too_long: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "prompts_truncated": self.prompts_truncated,
            "targets_too_long": self.targets_too_long,
        }


def tokenize_rows(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    kind: Kind,
    max_length: int = 1024,
    max_target_length: int = 256,
    min_prompt_tokens: int = 8,
) -> tuple[list[dict[str, list[int]]], TokenizeReport]:
    """Rows with ``messages`` and ``completion`` -> features with ``input_ids`` and ``labels``.

    causal: ``input_ids = prompt + completion + eos`` with the prompt's labels masked.
    seq2seq: ``input_ids = prompt`` and ``labels = completion (+ eos)``.
    """
    report = TokenizeReport()
    features: list[dict[str, list[int]]] = []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos token; the student could never stop"
        )
    for index, row in enumerate(rows):
        report.rows += 1
        prompt = render_prompt(row["messages"], tokenizer, kind)
        prompt_ids = tokenizer(prompt, add_special_tokens=kind == "seq2seq")["input_ids"]
        target_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [eos]
        if kind == "causal":
            budget = max_length - len(target_ids)
            if len(target_ids) > max_target_length or budget < min_prompt_tokens:
                report.targets_too_long += 1
                report.dropped_indices.append(index)
                continue
            if len(prompt_ids) > budget:
                prompt_ids = prompt_ids[len(prompt_ids) - budget :]
                report.prompts_truncated += 1
            features.append(
                {
                    "input_ids": prompt_ids + target_ids,
                    "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
                }
            )
        else:
            if len(target_ids) > max_target_length:
                report.targets_too_long += 1
                report.dropped_indices.append(index)
                continue
            if len(prompt_ids) > max_length:
                # Keep the end of the prompt (the inputs) and its final eos.
                prompt_ids = prompt_ids[len(prompt_ids) - max_length :]
                report.prompts_truncated += 1
            features.append({"input_ids": prompt_ids, "labels": target_ids})
        report.kept += 1
    return features, report
