"""BetterTogether: prompt and weight optimizers composed by a strategy string (Soylu et al.,
EMNLP 2024; DSPy's ``BetterTogether``).

``"p -> w -> p"`` runs the prompt optimizer, then the weight optimizer, then the prompt
optimizer again, each step starting from the program the previous step returned. A weight
step's traces come from that program (its instructions and demos), run by the teacher when
one is given, else by its own LM. Every step's program is scored on the valset; the best of
them, the starting program included, is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apprentice.evaluate.evaluate import Evaluate
from apprentice.metric import check_metric
from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset

__all__ = ["BetterTogether", "StepScore", "parse_strategy"]

log = logging.getLogger(__name__)

STEPS = {"p": "prompt", "w": "weights"}


@dataclass(frozen=True)
class StepScore:
    """One program of the strategy: ``step`` is ``start`` or the strategy's p / w in order.
    ``teacher_calls`` / ``teacher_cached_calls``: the calls the step made to the teacher
    (answered by it / from its cache), counted by the teacher's usage; None without a
    teacher that counts them."""

    index: int
    step: str
    score: float
    seconds: float
    teacher_calls: int | None = None
    teacher_cached_calls: int | None = None


def parse_strategy(strategy: str) -> list[str]:
    """``"p -> w -> p"`` -> ``["p", "w", "p"]``; anything else is refused, naming it."""
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a string like 'p -> w -> p', got {strategy!r}")
    steps = [s.strip() for s in strategy.split("->")]
    if not steps or any(s not in STEPS for s in steps):
        raise ValueError(
            f"strategy {strategy!r} is not a chain of 'p' (prompts) and 'w' (weights) joined "
            "by '->', e.g. 'p -> w -> p'"
        )
    return steps


class BetterTogether(Optimizer):
    """Composes ``prompt_optimizer`` (e.g. GEPA, BootstrapFewShotWithRandomSearch) and
    ``weight_optimizer`` (BootstrapFinetune) as ``strategy`` says. The scores of every step
    are in ``self.step_scores`` and on the returned program as ``candidate_scores``; the
    programs themselves in ``self.programs``."""

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        prompt_optimizer: Optimizer | None = None,
        weight_optimizer: Optimizer | None = None,
        num_threads: int = 8,
        display_progress: bool = False,
    ) -> None:
        check_metric(metric)
        if prompt_optimizer is None:
            from apprentice.optimize.random_search import BootstrapFewShotWithRandomSearch

            prompt_optimizer = BootstrapFewShotWithRandomSearch(metric, num_threads=num_threads)
        self.metric = metric
        self.prompt_optimizer = prompt_optimizer
        self.weight_optimizer = weight_optimizer
        self.num_threads = num_threads
        self.display_progress = display_progress
        self.step_scores: list[StepScore] = []
        self.programs: list[Module] = []

    def compile(
        self, student, *, trainset, teacher=None, valset=None, strategy: str = "p -> w -> p"
    ) -> Module:
        import time

        steps = parse_strategy(strategy)
        if "w" in steps and self.weight_optimizer is None:
            raise ValueError(
                f"strategy {strategy!r} has a weight step but no weight_optimizer was given: "
                "pass weight_optimizer=ap.BootstrapFinetune(metric=metric, student=...)"
            )
        trainset = _check_trainset(trainset)
        valset = _check_trainset(valset if valset is not None else trainset, "valset")
        evaluate = Evaluate(
            devset=valset,
            metric=self.metric,
            num_threads=self.num_threads,
            display_progress=self.display_progress,
        )
        self.step_scores, self.programs = [], []
        usage = getattr(teacher, "usage", None)

        def teacher_calls() -> tuple[int, int] | tuple[None, None]:
            return (usage.calls, usage.cached_calls) if usage is not None else (None, None)

        def keep(step: str, program: Module, seconds: float, before) -> None:
            after = teacher_calls()
            spent = [a - b if a is not None else None for a, b in zip(after, before, strict=True)]
            score = evaluate(program).score
            self.step_scores.append(StepScore(len(self.programs), step, score, seconds, *spent))
            self.programs.append(program)
            log.info("BetterTogether %s: %.4f on the valset (%.1f s)", step, score, seconds)

        program = student.deepcopy()
        keep("start", program, 0.0, teacher_calls())
        for index, step in enumerate(steps, 1):
            start, before = time.perf_counter(), teacher_calls()
            optimizer = self.prompt_optimizer if step == "p" else self.weight_optimizer
            if step == "w" and steps.count("w") > 1:
                optimizer = _own_run_dir(optimizer, index)
            # A weight step's teacher (BootstrapFinetune): this program run by the teacher LM,
            # or by its own LM without one (its instructions and demos either way).
            program = optimizer.compile(program, trainset=trainset, teacher=teacher, valset=valset)
            keep(step, program, time.perf_counter() - start, before)
        best = max(self.step_scores, key=lambda s: (s.score, -s.index))
        chosen = self.programs[best.index]
        chosen.candidate_scores = list(self.step_scores)
        return chosen


def _own_run_dir(optimizer: Optimizer, index: int) -> Optimizer:
    """With two weight steps, each trains in its own folder of the optimizer's run_dir: the
    second step's program differs, and a run_dir's traces belong to one program."""
    import copy

    run_dir = getattr(optimizer, "run_dir", None)
    if run_dir is None:
        return optimizer
    own = copy.copy(optimizer)
    own.run_dir = run_dir / f"step{index}-w"
    return own
