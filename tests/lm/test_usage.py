"""Usage accounting and prices."""

from __future__ import annotations

import threading

import pytest

from apprentice.lm import Price, Usage
from apprentice.lm.usage import UsageTracker


def test_price_is_dollars_per_million_tokens():
    assert Price(input=0.15, output=0.60).cost(1_000_000, 500_000) == pytest.approx(0.45)
    assert Price(input=0, output=0).cost(123, 456) == 0


@pytest.mark.parametrize("bad", [-1, float("nan"), "0.15", None, True])
def test_bad_prices_are_named(bad):
    with pytest.raises(ValueError, match=f"Price input must be .* got {bad!r}"):
        Price(input=bad, output=1.0)


def test_tracker_counts_tokens_and_cost_and_keeps_cached_calls_apart():
    tracker = UsageTracker(Price(input=2.0, output=4.0))
    tracker.record(Usage(100, 10), cached=False)
    tracker.record(Usage(100, 10), cached=True)
    assert tracker.summary() == {
        "calls": 1,
        "cached_calls": 1,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "cost_usd": pytest.approx((100 * 2.0 + 10 * 4.0) / 1e6),
    }


def test_tracker_counts_exactly_under_threads():
    tracker = UsageTracker()

    def work():
        for _ in range(1000):
            tracker.record(Usage(3, 1), cached=False)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (tracker.calls, tracker.prompt_tokens, tracker.completion_tokens) == (8000, 24000, 8000)
    assert tracker.cost is None


@pytest.mark.parametrize("bad", [-1, 2.5, float("inf"), True, "3", None])
def test_usage_counts_must_be_integers_of_at_least_zero(bad):
    with pytest.raises(ValueError, match=f"prompt_tokens must be an integer >= 0, got {bad!r}"):
        Usage(bad, 0)
    with pytest.raises(ValueError, match="completion_tokens must be an integer >= 0"):
        Usage(0, bad)
