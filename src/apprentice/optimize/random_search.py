"""BootstrapFewShotWithRandomSearch: several bootstrapped candidates, the best on a valset wins."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apprentice.evaluate.evaluate import Evaluate
from apprentice.module import Module
from apprentice.optimize.bootstrap import BootstrapFewShot
from apprentice.optimize.labeled import LabeledFewShot, Optimizer, _check_trainset

__all__ = ["BootstrapFewShotWithRandomSearch", "CandidateScore"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateScore:
    seed: int
    kind: str
    score: float


class BootstrapFewShotWithRandomSearch(Optimizer):
    """Candidates: zero-shot, labeled-only, and ``num_candidate_programs`` bootstrapped
    programs over differently shuffled trainsets with random demo counts. Each is scored
    on ``valset`` (examples in parallel); the best is returned, every score is recorded in
    ``self.candidate_scores`` and on the returned program as ``candidate_scores``."""

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        num_candidate_programs: int = 8,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        metric_threshold: float | None = None,
        max_rounds: int = 1,
        num_threads: int = 8,
        seed: int = 0,
        display_progress: bool = False,
    ) -> None:
        self.metric = metric
        self.num_candidate_programs = num_candidate_programs
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.metric_threshold = metric_threshold
        self.max_rounds = max_rounds
        self.num_threads = num_threads
        self.seed = seed
        self.display_progress = display_progress
        self.candidate_scores: list[CandidateScore] = []

    def _candidate(self, index: int, student, trainset, teacher) -> tuple[str, Module]:
        if index == -2:
            return "zero-shot", student.deepcopy()
        if index == -1:
            return "labeled", LabeledFewShot(self.max_labeled_demos, seed=self.seed).compile(
                student, trainset=trainset
            )
        rng = random.Random(self.seed + index)
        shuffled = list(trainset)
        if index > 0:
            rng.shuffle(shuffled)
        count = (
            self.max_bootstrapped_demos
            if index == 0
            else rng.randint(1, self.max_bootstrapped_demos)
        )
        optimizer = BootstrapFewShot(
            self.metric,
            metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=count,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            seed=self.seed + index,
        )
        return "bootstrapped", optimizer.compile(student, trainset=shuffled, teacher=teacher)

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        trainset = _check_trainset(trainset)
        valset = _check_trainset(valset if valset is not None else trainset, "valset")
        evaluate = Evaluate(
            devset=valset,
            metric=self.metric,
            num_threads=self.num_threads,
            display_progress=self.display_progress,
        )
        best: tuple[float, Module] | None = None
        self.candidate_scores = []
        for index in range(-2, self.num_candidate_programs):
            kind, candidate = self._candidate(index, student, trainset, teacher)
            score = evaluate(candidate).score
            self.candidate_scores.append(CandidateScore(index, kind, score))
            log.info("candidate %d (%s): %.4f", index, kind, score)
            if best is None or score > best[0]:
                best = (score, candidate)
        assert best is not None
        program = best[1]
        program.candidate_scores = list(self.candidate_scores)
        return program
