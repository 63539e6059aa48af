"""Tokenizing SFT rows with completion-only labels, and the prompt text both training and
inference use (so the student is trained on exactly the prompt it will be served).

Truncation never cuts a target: a prompt that is too long loses tokens from its start
(the instructions and demos, never the inputs closest to the answer) and a row whose
target alone does not fit is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["IGNORE_INDEX", "TokenizeReport", "render_prompt", "tokenize_rows"]

IGNORE_INDEX = -100
Kind = Literal["causal", "seq2seq"]


def render_prompt(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, kind: Kind = "causal"
) -> str:
    """The prompt text for a student: the tokenizer's chat template for causal students that
    have one, otherwise the plain flattening of ``formats.messages_to_prompt``."""
    if kind == "causal" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
    from apprentice.formats import messages_to_prompt

    return messages_to_prompt(messages)


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
