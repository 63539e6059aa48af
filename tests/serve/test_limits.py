"""Requests are held to the model's context, leave no state behind for the next ones, and
stop when their client leaves."""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_server import QUESTIONS, ask, call

CHAT = {"messages": [{"role": "user", "content": QUESTIONS[0]}]}


def chat(server, **options) -> tuple[int, dict]:
    status, _, reply = call(server, "POST", "/v1/chat/completions", {**CHAT, **options})
    return status, reply


@pytest.mark.parametrize(("kind", "context"), [("causal", 2048), ("seq2seq", 512)])
def test_max_tokens_is_capped_by_the_context_and_nothing_sticks(serve, kind, context):
    server = serve(kind)
    cards = call(server, "GET", "/v1/models")[2]["data"]
    assert {card["max_model_len"] for card in cards} == {context}
    before = [chat(server), chat(server, model="a", max_tokens=3)]
    assert before[0][0] == 200
    for max_tokens in (10**12, 500_000, context + 1):
        status, reply = chat(server, max_tokens=max_tokens)
        assert status == 400, reply
        message = reply["error"]["message"]
        assert f"max_tokens={max_tokens} does not fit" in message
        assert f"context is {context} tokens" in message
    long_prompt = " ".join(f"w{i}" for i in range(3 * context))
    status, reply = chat(server, messages=[{"role": "user", "content": long_prompt}])
    assert status == 400 and "send a shorter prompt" in reply["error"]["message"]
    after = [chat(server), chat(server, model="a", max_tokens=3)]
    assert [texts(r) for r in after] == [texts(r) for r in before]


def texts(result: tuple[int, dict]) -> tuple[int, list[str]]:
    status, reply = result
    return status, [c["message"]["content"] for c in reply["choices"]]


@pytest.fixture
def generate_calls(local_lm, monkeypatch):
    """The KV cache each generate call of the causal engine gets."""
    engine = local_lm("causal").engine
    seen: list[dict] = []
    original = type(engine.network).generate

    def spy(model, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append(
            {
                "cache_len": getattr(cache, "max_cache_len", None),
                "implementation": kwargs["generation_config"].cache_implementation,
                "width": kwargs["input_ids"].shape[1],
                "max_new": kwargs["generation_config"].max_new_tokens,
            }
        )
        return original(model, *args, **kwargs)

    monkeypatch.setattr(type(engine.network), "generate", spy)
    return engine, seen


def test_a_large_max_tokens_does_not_size_the_caches_of_later_calls(serve, generate_calls):
    engine, seen = generate_calls
    server = serve()
    room = engine.max_model_len - len(engine.encode(ask(QUESTIONS[0]).messages))
    assert chat(server, max_tokens=room)[0] == 200  # allowed: it stops at its eos anyway
    assert chat(server, max_tokens=4)[0] == 200
    last = seen[-1]
    assert last["implementation"] is None  # generate makes no cache of its own to keep
    assert last["cache_len"] is None or last["cache_len"] <= last["width"] + 4
    base = engine.network.get_base_model() if hasattr(engine.network, "get_base_model") else None
    for model in (engine.network, base):
        assert getattr(model, "_previous_max_cache_length", -1) <= last["width"] + 4


def test_a_seed_does_not_leak_into_later_requests(serve):
    import torch

    server = serve()
    state = torch.random.get_rng_state()
    status, reply = chat(server, temperature=1.0, seed=7, max_tokens=4)
    assert status == 200
    assert torch.equal(torch.random.get_rng_state(), state)
    again = chat(server, temperature=1.0, seed=7, max_tokens=4)[1]
    assert again["choices"] == reply["choices"]  # the seed still repeats its samples


def test_a_client_that_leaves_cancels_its_work(serve, monkeypatch):
    server = serve()
    engine = server.lm.engine
    monkeypatch.setattr(engine, "eos_ids", {10**6})  # no row ends by itself: only max_tokens
    room = engine.max_model_len - len(engine.encode(ask(QUESTIONS[0]).messages))
    stats = engine.stats
    cancelled, tokens = stats.cancelled, stats.tokens
    body = json.dumps({**CHAT, "max_tokens": room}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(server.address, timeout=30) as connection:
        connection.sendall(head.encode() + body)
        time.sleep(1.0)  # queued or running by now; either way it must stop
    deadline = time.monotonic() + 120
    while stats.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.cancelled == cancelled + 1
    assert stats.tokens - tokens < room // 2  # stopped long before its max_tokens
    assert chat(server, max_tokens=2)[0] == 200  # and the engine serves the next one


def test_the_library_path_holds_requests_to_the_context_too(local_lm):
    from apprentice.lm.base import Request

    lm = local_lm()
    too_long = Request(messages=ask(QUESTIONS[0]).messages, max_tokens=10**12)
    [error] = lm.generate([too_long], return_exceptions=True)
    assert isinstance(error, ValueError) and "max_model_len" in str(error)
    assert lm.generate([ask(QUESTIONS[0], max_tokens=2)])[0].usage.completion_tokens == 2
