"""Token usage and cost accounting, per LM.

Low in the LM layer: imports nothing from apprentice, so ``lm.base`` (which re-exports
``Usage``) builds on it without an import cycle.
"""

from __future__ import annotations

import operator
import threading
from dataclasses import dataclass

__all__ = ["Price", "Usage", "UsageTracker"]


@dataclass(frozen=True)
class Usage:
    """The tokens one call used, as its backend counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        # One rule for every source of counts (a server's reply, a cache row): a count
        # that is negative, fractional or infinite would silently corrupt usage and cost.
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if type(value) is not int:  # a numpy integer is stored as an int
                if isinstance(value, bool) or not hasattr(type(value), "__index__"):
                    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
                value = operator.index(value)
                object.__setattr__(self, name, value)
            if value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens, e.g. ``Price(input=0.15, output=0.60)``."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(
                    f"Price {name} must be a number of dollars per million tokens >= 0, "
                    f"got {value!r}"
                )

    def to_config(self) -> dict[str, float]:
        return {"input": self.input, "output": self.output}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


class UsageTracker:
    """Counts calls and tokens; cached answers are counted apart and cost nothing."""

    def __init__(self, price: Price | None = None) -> None:
        self.price = price
        self._lock = threading.Lock()
        self.calls = 0
        self.cached_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def record(self, usage: Usage, cached: bool) -> None:
        with self._lock:
            if cached:
                self.cached_calls += 1
                return
            self.calls += 1
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens

    @property
    def cost(self) -> float | None:
        """Dollars spent on uncached calls, or None when no price was set."""
        if self.price is None:
            return None
        return self.price.cost(self.prompt_tokens, self.completion_tokens)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost,
        }

    def reset(self) -> None:
        with self._lock:
            self.calls = self.cached_calls = self.prompt_tokens = self.completion_tokens = 0
