"""BestOfN and Refine: run a module up to N times, score each run, keep the best.

    best = ap.BestOfN(program, N=4, reward_fn=lambda inputs, pred: float(len(pred.query) < 60),
                      threshold=1.0)

``reward_fn(inputs, prediction)`` returns a score, or ``(score, feedback)``. The attempts
stop at the first score >= ``threshold``. Attempt 0 samples as the module is configured;
attempt i > 0 runs with ``temperature`` and rollout number i (a new cache key),
so a cached or deterministic backend is asked a new question rather than handing back the
same reply. ``Refine`` also passes the previous attempt's output and feedback to the next
attempt's ``target`` predictor (the ``past_<field>`` and ``feedback`` inputs of
Assert/Suggest). Every attempt's steps stay in the trace; those of the attempts not
chosen are marked rejected, so they never become demos or training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from apprentice.module import Module
from apprentice.predict.assertions import Attempt, Backtrack, attempt_scope

__all__ = ["BestOfN", "Refine"]

log = logging.getLogger(__name__)

RewardFn = Callable[[dict[str, Any], Any], Any]


class BestOfN(Module):
    """Runs ``module`` up to ``N`` times and returns the prediction with the best reward."""

    def __init__(
        self,
        module: Module,
        N: int,  # noqa: N803 - the name users know
        reward_fn: RewardFn,
        threshold: float,
        *,
        temperature: float = 1.0,
    ) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"module={module!r} is not an apprentice Module")
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N={N!r} must be a positive integer (the most attempts to run)")
        if not callable(reward_fn):
            raise TypeError(f"reward_fn={reward_fn!r} must be a function (inputs, prediction)")
        self.module = module
        self.N = N
        self.reward_fn = reward_fn
        self.threshold = threshold
        self.temperature = temperature
        self.scores: list[float | None] = []  # the last call's rewards, one per attempt run

    def forward(self, **inputs: Any) -> Any:
        attempts: list[tuple[Attempt, float, Any]] = []
        last_error: Exception | None = None
        previous: tuple[Attempt, str, float] | None = None
        self.scores = []
        for i in range(self.N):
            sampling = {} if i == 0 else {"rollout": i, "temperature": self.temperature}
            attempt = Attempt(f"{type(self).__name__} attempt {i}", sampling=sampling)
            self._prepare(attempt, previous)
            with attempt_scope(attempt):
                try:
                    prediction = self.module(**inputs)
                except Backtrack:
                    raise  # an Assert/Suggest re-run of the whole program: not ours to catch
                except Exception as exc:  # one bad attempt is one bad sample
                    attempt.reject(f"{type(self).__name__} attempt {i} failed: {exc}")
                    self.scores.append(None)
                    last_error = exc
                    log.debug("%s attempt %d failed: %s", type(self).__name__, i, exc)
                    continue
            score, feedback = self._reward(inputs, prediction)
            self.scores.append(score)
            attempts.append((attempt, score, prediction))
            previous = (attempt, feedback, score)
            if score >= self.threshold:
                break
        if not attempts:
            raise RuntimeError(
                f"all {self.N} attempts of {type(self).__name__} failed; the last: {last_error}"
            ) from last_error
        best = max(range(len(attempts)), key=lambda k: attempts[k][1])
        chosen, best_score, prediction = attempts[best]
        for attempt, score, _ in attempts:
            if attempt is not chosen:
                attempt.reject(
                    f"not chosen by {type(self).__name__}: {attempt.label} scored {score:.3g}, "
                    f"{chosen.label} scored {best_score:.3g}"
                )
        return prediction

    def _prepare(self, attempt: Attempt, previous: tuple[Attempt, str, float] | None) -> None:
        """BestOfN's attempts are independent samples; Refine adds feedback here."""

    def _reward(self, inputs: dict[str, Any], prediction: Any) -> tuple[float, str]:
        result = self.reward_fn(dict(inputs), prediction)
        feedback = ""
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[1], str):
                raise TypeError(
                    f"reward_fn returned {result!r}; return a score or (score, feedback text)"
                )
            result, feedback = result
        if isinstance(result, bool):
            result = float(result)
        if not isinstance(result, (int, float)):
            raise TypeError(f"reward_fn returned {result!r}; return a number (higher is better)")
        return float(result), feedback


class Refine(BestOfN):
    """BestOfN whose every attempt after the first sees the previous attempt's output and
    feedback: ``reward_fn``'s text when it returns ``(score, feedback)``, else a note of the
    score. The feedback goes to ``target`` (a predictor of ``module``; default: the one
    called last in the previous attempt)."""

    def __init__(
        self,
        module: Module,
        N: int,  # noqa: N803
        reward_fn: RewardFn,
        threshold: float,
        *,
        target: Module | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(module, N, reward_fn, threshold, temperature=temperature)
        if target is not None and id(target) not in {id(p) for p in module.predictors()}:
            raise ValueError(f"target={target!r} is not a predictor of {module!r}")
        self.target = target

    def _prepare(self, attempt: Attempt, previous: tuple[Attempt, str, float] | None) -> None:
        if previous is None:
            return
        before, feedback, score = previous
        call = before.last_call(self.target)
        if call is None:
            return
        predictor, number = call
        message = feedback or (
            f"that answer scored {score:.3g}; the goal is {self.threshold:.3g}: write a better one"
        )
        past = before.outputs.get((id(predictor), number), {})
        attempt.feedback[(id(predictor), number)] = (past, message)
