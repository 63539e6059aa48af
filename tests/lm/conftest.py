"""Fixtures for the LM layer: a loopback OpenAI-compatible server and LMs pointed at it."""

from __future__ import annotations

import pytest
from stub_server import StubServer

from apprentice.lm import OpenAILM


@pytest.fixture
def stub():
    server = StubServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_lm(stub):
    """OpenAILM factory aimed at the stub, with fast retries and no cache unless asked."""
    made: list[OpenAILM] = []

    def make(model: str = "teacher", **options) -> OpenAILM:
        options = {"base_url": stub.url, "cache": False, "retry_backoff": 0.01, **options}
        lm = OpenAILM(model, **options)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.close()
