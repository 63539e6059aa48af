"""How much work one request may cause is bounded: a prompt too long for the context is
refused before it is tokenized, a body of countless tiny elements before it is parsed, and
prompts x n x max_tokens has a cap that the 400 names."""

from __future__ import annotations

import json

from test_server import call

from apprentice.serve.protocol import (
    MAX_JSON_ELEMENTS,
    MAX_REQUEST_TOKENS,
    MAX_ROWS,
    json_object,
)


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(serve, monkeypatch):
    server = serve()
    engine = server.lm.engine
    tokenized: list[int] = []
    real = engine._tokenizer

    def spy():
        tokenized.append(1)
        return real()

    monkeypatch.setattr(engine, "_tokenizer", spy)
    huge = "word " * 3_000_000  # 15 MB
    body = {"messages": [{"role": "user", "content": huge}]}
    status, _, reply = call(server, "POST", "/v1/chat/completions", body)
    assert status == 400, reply
    message = reply["error"]["message"]
    assert "15000000 characters" in message and f"{engine.max_model_len} tokens" in message
    assert not tokenized  # refused from its length alone
    assert call(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_a_body_of_countless_tiny_elements_is_refused_before_parsing(serve):
    server = serve()
    body = b'{"messages": [' + b"{}," * 5_500_000 + b"{}]}"  # 16 MiB
    status, _, reply = call(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and f"at most {MAX_JSON_ELEMENTS} are read" in reply["error"]["message"]
    text = "a, [b] {c} " * 20_000  # brackets and commas inside strings are text: not counted
    assert json_object(json.dumps({"prompt": text}).encode()) == {"prompt": text}
    assert call(server, "GET", "/health")[0] == 200


def test_prompts_times_n_times_max_tokens_is_capped_with_the_numbers(serve):
    server = serve()
    body = {"prompt": ["x"] * 64, "n": 64, "max_tokens": 2000}
    status, _, reply = call(server, "POST", "/v1/completions", json.dumps(body).encode())
    assert status == 400, reply
    message = reply["error"]["message"]
    assert "64 prompt(s) x n=64 = 4096 sequences of up to 2000 tokens (8192000 tokens)" in message
    assert f"at most {MAX_ROWS} sequences and {MAX_REQUEST_TOKENS} tokens" in message
    status, _, reply = call(
        server, "POST", "/v1/completions", {"prompt": ["x"] * 4, "n": 2, "max_tokens": 2}
    )
    assert status == 200 and len(reply["choices"]) == 8
