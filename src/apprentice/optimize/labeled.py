"""LabeledFewShot: demos drawn straight from the labeled training set."""

from __future__ import annotations

import random
from collections.abc import Sequence

from apprentice.example import Example
from apprentice.module import Module

__all__ = ["LabeledFewShot", "Optimizer"]


class Optimizer:
    """``compile(student, trainset=..., teacher=..., valset=...)`` returns a new program."""

    def compile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        teacher: object = None,
        valset: Sequence[Example] | None = None,
    ) -> Module:
        raise NotImplementedError


def _check_trainset(trainset: Sequence[Example], name: str = "trainset") -> list[Example]:
    if not trainset:
        raise ValueError(f"{name} is empty: give at least one ap.Example")
    for i, example in enumerate(trainset):
        if not isinstance(example, Example):
            raise TypeError(f"{name}[{i}] is {type(example).__name__}, expected ap.Example")
    return list(trainset)


class LabeledFewShot(Optimizer):
    """Gives every predictor up to ``k`` labeled examples as demos (a seeded sample)."""

    def __init__(self, k: int = 16, *, seed: int = 0) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.seed = seed

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        examples = _check_trainset(trainset)
        program = student.deepcopy()
        rng = random.Random(self.seed)
        for predictor in program.predictors():
            predictor.demos = rng.sample(examples, min(self.k, len(examples)))
        return program
