"""ap.inspect_history: the calls of every LM, the configured one and per-predictor ones."""

from __future__ import annotations

import io

import apprentice as ap


def named(name: str) -> ap.ScriptedLM:
    return ap.ScriptedLM(lambda signature, inputs: {"answer": f"from {name}"}, model=name)


def test_inspect_history_shows_every_lms_calls_in_order():
    default, own = named("default-lm"), named("own-lm")
    ap.configure(lm=default)
    first = ap.Predict("question -> answer")
    second = ap.Predict("question -> answer", lm=own)  # bound to its own LM
    first(question="one")
    second(question="two")
    first(question="three")
    shown = ap.inspect_history(3, file=io.StringIO())
    # Before: only the configured LM's calls ("one", "three"); "two" was invisible.
    assert shown.count("=====") == 6
    order = [shown.index(f"[[question]]\n{q}") for q in ("one", "two", "three")]
    assert order == sorted(order)
    assert "ScriptedLM('own-lm')" in shown and "from own-lm" in shown
    last = ap.inspect_history(1, file=io.StringIO())
    assert "three" in last and "two" not in last
    # One LM's calls only, when asked.
    only = ap.inspect_history(5, lm=own, file=io.StringIO())
    assert "two" in only and "one" not in only and "three" not in only
