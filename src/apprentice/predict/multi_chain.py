"""MultiChainComparison: read M attempts at a task (each with its reasoning) and answer.

The attempts are written into one input field, ``attempts``, one line each::

    Student Attempt #1: «reasoning: ... answer: ...»

and the predictor writes a ``rationale`` that weighs them, then the signature's outputs.
Attempts usually come from ``ChainOfThought(signature, n=M)`` (its ``.completions``) or
from M separate calls. The comparison is one predictor call, so it is traced and
distilled like any other step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from apprentice.example import Example, Prediction
from apprentice.formats.values import format_value
from apprentice.module import Module
from apprentice.predict.predict import Predict
from apprentice.signature import InputField, OutputField, Signature, ensure_signature

__all__ = ["MultiChainComparison", "render_attempts"]

RATIONALE_DESC = "Compare the attempts: where they agree, where they differ, which is right."


def render_attempts(
    attempts: Iterable[Mapping[str, Any]], signature: type[Signature], reasoning_key: str
) -> str:
    """One line per attempt: its reasoning, then its output fields."""
    lines = []
    for i, attempt in enumerate(attempts, 1):
        parts = [f"{reasoning_key}: {str(attempt.get(reasoning_key, '')).strip()}"]
        for name, field in signature.output_fields.items():
            value = format_value(attempt.get(name), field.annotation, is_input=False)
            parts.append(f"{name}: {value.strip()}")
        lines.append(f"Student Attempt #{i}: «{' '.join(parts)}»")
    return "\n".join(lines)


class MultiChainComparison(Module):
    """``MultiChainComparison(signature, M=3)``; call it as ``mcc(attempts, **inputs)``
    where ``attempts`` is a Prediction with M completions or a list of M dicts/Predictions."""

    def __init__(
        self,
        signature: str | type[Signature],
        M: int = 3,  # noqa: N803 - the name users know
        *,
        reasoning_key: str = "reasoning",
        **options: Any,
    ) -> None:
        if M < 1:
            raise ValueError(f"M must be at least 1, got {M}")
        self.signature = ensure_signature(signature)
        self.M = M
        self.reasoning_key = reasoning_key
        compare = self.signature.append(
            "attempts", InputField(desc=f"{M} students' attempts, each with its reasoning")
        ).prepend("rationale", OutputField(desc=RATIONALE_DESC))
        self.predict = Predict(compare, **options)

    def forward(self, attempts: Prediction | Iterable[Mapping[str, Any]], **inputs: Any):
        rows = self._rows(attempts)
        text = render_attempts(rows, self.signature, self.reasoning_key)
        return self.predict(**inputs, attempts=text)

    def _rows(self, attempts: Prediction | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(attempts, Prediction):
            rows = [dict(c) for c in attempts.completions]
        else:
            rows = [a.to_dict() if isinstance(a, Example) else dict(a) for a in attempts]
        if len(rows) != self.M:
            raise ValueError(
                f"MultiChainComparison(M={self.M}) needs {self.M} attempts, got {len(rows)}: "
                f"sample them with ChainOfThought(..., n={self.M}) or pass M={len(rows)}"
            )
        return rows

    def __repr__(self) -> str:
        return f"MultiChainComparison({self.signature.signature_string()!r}, M={self.M})"
