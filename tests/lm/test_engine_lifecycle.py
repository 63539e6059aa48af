"""Engines live for the process unless released: release_engines gives them back."""

from __future__ import annotations

import pytest

import apprentice as ap
from apprentice.lm.base import Request
from apprentice.lm.local import LocalLM, get_engine

TEXTS = ["Where is order A12345? It has not arrived.", "I was charged twice."] * 5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from apprentice.train.tiny import make_tiny_student

    root = tmp_path_factory.mktemp("lifecycle")
    return [
        make_tiny_student("causal", TEXTS, root / f"base{i}", hidden_size=32, num_layers=1, seed=i)
        for i in range(2)
    ]


def _ask(lm) -> str:
    request = Request(messages=({"role": "user", "content": "Where is my order?"},))
    return lm.generate([request])[0].text


def test_release_engines_drops_one_base_or_all_and_old_lms_still_answer(bases, monkeypatch):
    from apprentice.lm import engines

    # Tables of this test's own: releasing "all" must not touch other tests' engines.
    for table in engines._TABLES:
        monkeypatch.setattr(table, "engines", {})
    first, second = (LocalLM(base, max_new_tokens=4) for base in bases)
    answer = _ask(first)
    _ask(second)
    assert first.engine._thread.is_alive()

    assert ap.release_engines(bases[0]) == 1
    assert first.engine._thread is None  # its batching thread stopped
    assert get_engine(bases[0]) is not first.engine  # a new LM gets a fresh engine
    assert get_engine(bases[1]) is second.engine  # the other base was left alone
    assert _ask(first) == answer  # an LM that still holds the old engine keeps working

    assert ap.release_engines() == 2  # bases[0]'s fresh engine and bases[1]'s
    assert ap.release_engines() == 0
