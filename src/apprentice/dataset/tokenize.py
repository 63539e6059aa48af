"""Tokenizing SFT rows with completion-only labels, on the prompt text that inference uses
too (``formats.render_prompt``: the student is trained on exactly the prompt it is served).

Nothing is cut: a row whose prompt and target do not fit ``max_length`` (or whose target
exceeds ``max_target_length``) is dropped and counted, the same rule the engines apply
when serving (a prompt beyond the context is refused, never cut). Cutting a training
prompt would teach the student a prompt it is never served: without its header,
instructions or field markers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apprentice.formats.prompt import Kind, PromptTemplate, render_prompt

__all__ = ["IGNORE_INDEX", "TokenizeReport", "render_prompt", "tokenize_rows"]

IGNORE_INDEX = -100


@dataclass
class TokenizeReport:
    rows: int = 0
    kept: int = 0
    prompts_too_long: int = 0
    targets_too_long: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "prompts_too_long": self.prompts_too_long,
            "targets_too_long": self.targets_too_long,
        }


def tokenize_rows(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    kind: Kind,
    max_length: int = 1024,
    max_target_length: int = 256,
    template: PromptTemplate | None = None,
) -> tuple[list[dict[str, list[int]]], TokenizeReport]:
    """Rows with ``messages`` and ``completion`` -> features with ``input_ids`` and ``labels``.

    causal: ``input_ids = prompt + completion + eos`` with the prompt's labels masked.
    seq2seq: ``input_ids = prompt`` and ``labels = completion (+ eos)``.
    ``template``: the chat template and variables recorded with the dataset.
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
        prompt = render_prompt(
            row["messages"], tokenizer, kind, **(template or PromptTemplate()).options()
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=kind == "seq2seq")["input_ids"]
        target_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [eos]
        if len(target_ids) > max_target_length:
            report.targets_too_long += 1
            report.dropped_indices.append(index)
            continue
        length = len(prompt_ids) + len(target_ids) if kind == "causal" else len(prompt_ids)
        if length > max_length:
            report.prompts_too_long += 1
            report.dropped_indices.append(index)
            continue
        if kind == "causal":
            features.append(
                {
                    "input_ids": prompt_ids + target_ids,
                    "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
                }
            )
        else:
            features.append({"input_ids": prompt_ids, "labels": target_ids})
        report.kept += 1
    return features, report
