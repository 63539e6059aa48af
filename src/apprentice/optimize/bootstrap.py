"""BootstrapFewShot: demos are the teacher's own successful steps, one set per predictor."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from apprentice.example import Example
from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset
from apprentice.traces.bootstrap import _retry_copy, _teacher_program, passes
from apprentice.traces.capture import Step, run_traced

__all__ = ["BootstrapFewShot"]


log = logging.getLogger(__name__)


class BootstrapFewShot(Optimizer):
    """Runs the teacher over the trainset until ``max_bootstrapped_demos`` runs pass the
    metric; each passing run's steps become demos of their predictors. Remaining demo
    slots (up to ``max_labeled_demos``) are filled with labeled examples that were not
    bootstrapped. Round r > 0 re-tries the failures at temperature 0.7 with a new rollout.
    """

    def __init__(
        self,
        metric: Callable[..., Any] | None = None,
        *,
        metric_threshold: float | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        max_errors: int | None = None,
        seed: int = 0,
    ) -> None:
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.metric = metric
        self.metric_threshold = metric_threshold
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.max_errors = max_errors
        self.seed = seed
        self.stats: dict[str, int] = {}

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        examples = _check_trainset(trainset)
        program = student.deepcopy()
        runner = _teacher_program(student, teacher)
        paths = [path for path, _ in program.named_predictors()]
        teacher_paths = [path for path, _ in runner.named_predictors()]
        if paths != teacher_paths:
            raise ValueError(
                f"teacher's predictors {teacher_paths} differ from the student's {paths}; "
                "the teacher must be the same program"
            )
        demos: dict[str, list[Example]] = {path: [] for path in paths}
        predictors = dict(program.named_predictors())
        used: set[int] = set()
        errors = 0
        first_error: str | None = None
        tried = 0
        for round_ in range(self.max_rounds):
            current = runner if round_ == 0 else _retry_copy(runner, round_, 0.7)
            for index, example in enumerate(examples):
                if len(used) >= self.max_bootstrapped_demos:
                    break
                if index in used:
                    continue
                trace = run_traced(current, example, metric=self.metric)
                tried += 1
                if not trace.ok:
                    errors += 1
                    first_error = first_error or trace.error
                    # The first few at WARNING (a broken metric or teacher shows at once),
                    # the rest at DEBUG so a long run's log stays readable.
                    log.log(
                        logging.WARNING if errors <= 3 else logging.DEBUG,
                        "BootstrapFewShot: example %d failed: %s",
                        index,
                        trace.error,
                    )
                    if self.max_errors is not None and errors > self.max_errors:
                        raise RuntimeError(
                            f"{errors} teacher runs failed, more than max_errors={self.max_errors}; "
                            f"last: {trace.error}"
                        )
                if not passes(trace, self.metric_threshold):
                    continue
                used.add(index)
                for step in trace.steps:
                    demo = _demo_of(step, predictors)
                    if demo is not None:
                        demos[step.predictor].append(demo)
        if tried and errors == tried:
            raise RuntimeError(
                f"BootstrapFewShot: all {tried} teacher runs failed, so no demos could be "
                f"bootstrapped; the first error: {first_error}"
            )
        rng = random.Random(self.seed)
        rest = [e for i, e in enumerate(examples) if i not in used]
        rng.shuffle(rest)
        for path, predictor in program.named_predictors():
            own = demos[path][: self.max_bootstrapped_demos]
            labeled = rest[: max(0, self.max_labeled_demos - len(own))]
            predictor.demos = own + labeled
        self.stats = {"bootstrapped": len(used), "errors": errors, "tried": tried}
        log.info("BootstrapFewShot: %s", self.stats)
        return program


def _demo_of(step: Step, predictors: dict[str, Any]) -> Example | None:
    """A step as a demo of its predictor, or None: a failed or rejected step (an attempt an
    Assert/Suggest or BestOfN threw away) never teaches. The demo holds the predictor's own
    fields only, so a re-run's ``past_*`` and ``feedback`` inputs stay out of it."""
    predictor = predictors.get(step.predictor)
    if predictor is None or step.rejected or step.error is not None or step.output is None:
        return None
    names = predictor.signature.fields
    values = {**step.inputs, **step.output}
    return Example({n: values[n] for n in names if n in values})
