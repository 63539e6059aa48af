"""Calling a user's metric: ``metric(example, prediction)`` or
``metric(example, prediction, trace)``, both accepted everywhere a metric is taken.

Low in the layers (imports nothing from apprentice): tracing, evaluation and the
optimizers all call metrics through here, so a two-argument metric scores the same in
``Evaluate`` as in a bootstrap.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

__all__ = ["as_score", "bind_metric", "check_metric"]


def check_metric(metric: Any) -> None:
    """Refuses, before any run, something that cannot be called as a metric."""
    if not callable(metric):
        raise TypeError(
            f"metric must be a function metric(example, prediction, trace=None), got {metric!r}"
        )
    try:
        signature = inspect.signature(metric)
    except ValueError:  # no signature to inspect (some builtins): trust it
        return
    for args in ((None, None), (None, None, None)):
        try:
            signature.bind(*args)
            return
        except TypeError:
            pass
    raise TypeError(
        f"metric {metric!r} has signature {signature}; it must accept "
        "(example, prediction) or (example, prediction, trace)"
    )


def bind_metric(metric: Callable[..., Any]) -> Callable[[Any, Any, Any], Any]:
    """``call(example, prediction, trace)`` for any accepted metric: the trace is passed
    when the metric takes a third argument, and left out when it takes only two."""
    try:
        signature = inspect.signature(metric)
    except ValueError:  # no signature to inspect: assume the full form
        return metric
    try:
        signature.bind(None, None, None)
    except TypeError:
        return lambda example, prediction, trace: metric(example, prediction)
    return metric


def as_score(value: Any, where: Any) -> float:
    """A metric's return value as a float; bools count as 0/1. ``where`` names the example."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"metric returned {value!r} for example {where}; return a number or bool")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"metric returned {value!r} for example {where}; return a number or bool"
        ) from None
    if math.isnan(score):
        raise ValueError(f"metric returned NaN for example {where}")
    return score
