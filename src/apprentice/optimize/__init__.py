"""Compile-time optimizers: each exposes compile(student, trainset=..., teacher=..., valset=...)."""

from apprentice.optimize.bootstrap import BootstrapFewShot
from apprentice.optimize.finetune import BootstrapFinetune
from apprentice.optimize.labeled import LabeledFewShot, Optimizer
from apprentice.optimize.random_search import BootstrapFewShotWithRandomSearch, CandidateScore

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapFinetune",
    "CandidateScore",
    "LabeledFewShot",
    "Optimizer",
]
