"""What one saved predictor in a program file may hold, checked before anything loads.

``Module.load_state`` reads every predictor's entry through ``read_predictor_state``
first and changes the program only when all of them passed, so a file that is wrong in
its last predictor leaves the program as it was. A malformed entry raises
``ProgramFileError`` naming the file, the predictor and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apprentice.module import ProgramFileError

__all__ = ["SavedConfig", "SavedPredictor", "read_predictor_state"]


class _Strict(BaseModel):
    # Strict: a string where a number belongs is an error, not a silent conversion.
    model_config = ConfigDict(strict=True, extra="ignore")


class SavedField(_Strict):
    name: str
    desc: str = ""


class SavedSignature(_Strict):
    instructions: str | None = None
    fields: list[SavedField] = Field(default_factory=list)


class SavedConfig(_Strict):
    """The sampling options ``Predict.update_config`` accepts; any other key is refused."""

    model_config = ConfigDict(strict=True, extra="forbid")

    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    stop: list[str] | None = None
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    rollout: int | None = Field(None, ge=0)


class SavedPredictor(_Strict):
    signature: SavedSignature = Field(default_factory=SavedSignature)
    demos: list[dict[str, Any]] = Field(default_factory=list)
    config: SavedConfig = Field(default_factory=SavedConfig)
    lm: dict[str, Any] | None = None
    format: str | None = None


def read_predictor_state(state: Any, where: str) -> SavedPredictor:
    """``state`` checked against ``SavedPredictor``; ProgramFileError says what is wrong."""
    if not isinstance(state, Mapping):
        raise ProgramFileError(
            f"{where}: a saved predictor is a JSON object, got {type(state).__name__}"
        )
    try:
        return SavedPredictor.model_validate(dict(state))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r:.80})"
            for e in exc.errors()[:5]
        )
        raise ProgramFileError(f"{where}: {problems}") from None
