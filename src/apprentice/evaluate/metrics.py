"""Standard QA metrics: normalized exact match, token F1, answer-in-passages.

Normalization follows the usual open-QA convention: lower-case, drop punctuation and
the articles a/an/the, collapse whitespace.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = [
    "answer_exact_match",
    "answer_passage_match",
    "exact_match",
    "normalize_text",
    "passage_has_answer",
    "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFD", str(text)).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Iterable[str]) -> list[str]:
    if isinstance(gold, str):
        return [gold]
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return [str(gold)]
    if isinstance(gold, (list, tuple, set, frozenset)):
        return [str(g) for g in gold]
    raise TypeError(f"gold answer must be a str or a list of str, got {gold!r}")


def _field(record: Any, name: str, what: str) -> Any:
    try:
        return record[name]
    except (KeyError, TypeError, IndexError):
        fields = list(record.keys()) if hasattr(record, "keys") else None
        raise KeyError(
            f"{what} {record!r} has no field {name!r}"
            + (f"; fields: {fields}" if fields is not None else "")
        ) from None


def exact_match(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer."""
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(g) for g in _golds(gold)))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_text(prediction).split(), normalize_text(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Iterable[str]) -> float:
    """Best token-overlap F1 against any gold answer."""
    return max((_f1(prediction, g) for g in _golds(gold)), default=0.0)


def passage_has_answer(passages: Iterable[str] | str, gold: str | Iterable[str]) -> float:
    """1.0 when any normalized gold answer occurs as whole words in any passage."""
    passages = [passages] if isinstance(passages, str) else list(passages)
    texts = [f" {normalize_text(str(p))} " for p in passages]
    answers = [normalize_text(g) for g in _golds(gold)]
    return float(any(a and f" {a} " in t for a in answers for t in texts))


def answer_exact_match(
    example: Any, prediction: Any, trace: Any = None, *, field: str = "answer"
) -> float:
    """Metric form: ``example.answer`` (str or list of str) vs ``prediction.answer``."""
    return exact_match(
        str(_field(prediction, field, "prediction")), _field(example, field, "example")
    )


def answer_passage_match(
    example: Any, prediction: Any, trace: Any = None, *, field: str = "answer"
) -> float:
    """Metric form: does any of ``prediction.context`` contain ``example.answer``."""
    return passage_has_answer(
        _field(prediction, "context", "prediction"), _field(example, field, "example")
    )
