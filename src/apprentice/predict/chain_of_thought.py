"""ChainOfThought: Predict with a ``reasoning`` output field placed before the others."""

from __future__ import annotations

from typing import Any

from apprentice.predict.predict import Predict
from apprentice.signature import OutputField, Signature, ensure_signature

__all__ = ["ChainOfThought"]

REASONING_DESC = "Think step by step to reach the answer."


class ChainOfThought(Predict):
    def __init__(
        self,
        signature: str | type[Signature],
        *,
        reasoning_desc: str = REASONING_DESC,
        **options: Any,
    ) -> None:
        base = ensure_signature(signature)
        if "reasoning" not in base.fields:
            base = base.prepend("reasoning", OutputField(desc=reasoning_desc))
        super().__init__(base, **options)
