"""Compile-time optimizers: each exposes compile(student, trainset=..., teacher=..., valset=...)."""

from apprentice.optimize.bootstrap import BootstrapFewShot
from apprentice.optimize.finetune import BootstrapFinetune
from apprentice.optimize.gepa import GEPA, GEPACandidate
from apprentice.optimize.labeled import LabeledFewShot, Optimizer
from apprentice.optimize.random_search import BootstrapFewShotWithRandomSearch, CandidateScore
from apprentice.optimize.together import BetterTogether, StepScore

__all__ = [
    "GEPA",
    "BetterTogether",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapFinetune",
    "CandidateScore",
    "GEPACandidate",
    "LabeledFewShot",
    "Optimizer",
    "StepScore",
]
