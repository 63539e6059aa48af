"""The base of every typed config (training, serving, recipes): one set of rules for all.

It sits in the lowest layer so that ``train/``, ``serve/`` and the recipe can each own
their own section without importing one another.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["ConfigSection"]


class ConfigSection(BaseModel):
    """Base of every config section (here and in recipes): unknown keys, ``inf``/``nan``
    and booleans where a number belongs (``batch_size: true`` would be 1) are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _wants_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not a boolean")
        return value


def _wants_number(annotation: Any) -> bool:
    """An int or float field that does not also take a bool."""
    options = set(typing.get_args(annotation)) or {annotation}
    return bool(options & {int, float}) and bool not in options
