"""Our OpenAI-compatible server over tiny T5 and Llama students: what it serves, that its
answers are the local backend's answers, runtime adapters, batching, and 4xx replies."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from serve_helpers import client

from apprentice.formats import messages_to_prompt
from apprentice.lm.base import LMRequestError, Request

SYSTEM = "Triage the customer ticket: say whether it is about billing, a bug or shipping."
QUESTIONS = [
    "Hi, I was charged twice for order A12345.",
    "The app crashes every time I open order A55555.",
    "Order A77777 has not arrived after two weeks.",
    "ticket billing bug shipping",
]


def ask(text: str, **sampling) -> Request:
    return Request(
        messages=({"role": "system", "content": SYSTEM}, {"role": "user", "content": text}),
        **sampling,
    )


def call(server, method: str, path: str, body=None, headers=None) -> tuple[int, str, dict]:
    """One raw HTTP exchange: (status, content type, parsed JSON or {"text": body})."""
    connection = http.client.HTTPConnection(*server.address, timeout=30)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers=headers or {})
    reply = connection.getresponse()
    raw = reply.read().decode()
    kind = reply.getheader("Content-Type", "")
    connection.close()
    return reply.status, kind, json.loads(raw) if "json" in kind else {"text": raw}


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_chat_and_completions_answer_as_the_local_backend(serve, local_lm, kind):
    server = serve(kind)
    direct = local_lm(kind)
    status, _, models = call(server, "GET", "/v1/models")
    assert status == 200
    ids = [card["id"] for card in models["data"]]
    assert ids == [f"{kind}-base", "a", "b"] and server.model_name == f"{kind}-base"
    assert str(direct.model) not in json.dumps(models)  # ids are names: no path is shown
    hashes = {card["id"]: card.get("adapter_hash") for card in models["data"]}
    assert hashes == {
        server.model_name: None,
        "a": direct.engine.adapter_hash("a"),
        "b": direct.engine.adapter_hash("b"),
    }

    requests = [ask(q) for q in QUESTIONS[:3]]
    for adapter in (None, "a", "b"):
        expected = [r.texts for r in direct.with_adapter(adapter).generate(requests)]
        chat = client(server, adapter=adapter)
        text = client(server, adapter=adapter, model_type="text")
        assert [r.texts for r in chat.generate(requests)] == expected
        # completions: the flattened prompt comes back as the same messages
        assert [r.texts for r in text.generate(requests)] == expected
    answers = {
        a: client(server, adapter=a).generate(requests[:1])[0].text for a in (None, "a", "b")
    }
    assert len(set(answers.values())) == 3  # the model name picks the adapter


def test_completion_bodies_follow_the_openai_schema(serve, local_lm):
    server = serve()
    prompt = messages_to_prompt(ask(QUESTIONS[0]).messages)
    body = {"model": "b", "prompt": [prompt, "free text"], "max_tokens": 4, "n": 2}
    status, _, reply = call(server, "POST", "/v1/completions", body)
    assert status == 200 and reply["object"] == "text_completion" and reply["model"] == "b"
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]  # two prompts x n=2
    greedy = local_lm().with_adapter("b").generate([ask(QUESTIONS[0], max_tokens=4)])[0]
    assert reply["choices"][0]["text"] == reply["choices"][1]["text"] == greedy.text
    usage = reply["usage"]
    assert usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    chat = {
        "model": "a",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    status, _, reply = call(server, "POST", "/v1/chat/completions", {**chat, "max_tokens": 3})
    assert status == 200 and reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    status, kind, reply = call(server, "GET", "/health")
    assert (status, reply) == (200, {"text": ""})


def test_sampling_options_reach_the_engine(serve):
    server = serve()
    lm = client(server, adapter="a")
    seeded = ask(QUESTIONS[1], temperature=1.0, top_p=0.9, n=3, seed=11)
    first, again = lm.generate([seeded])[0], lm.generate([seeded])[0]
    assert len(first.texts) == 3 and first.texts == again.texts  # the seed repeats samples
    short = lm.generate([ask(QUESTIONS[1], max_tokens=2)])[0]
    assert short.usage.completion_tokens == 2 and short.finish_reasons == ["length"]
    full = lm.generate([ask(QUESTIONS[1])])[0].text
    stop = full[2:4]
    assert lm.generate([ask(QUESTIONS[1], stop=[stop])])[0].text == full[: full.find(stop)]


def test_adapters_load_and_unload_at_runtime(serve, students, local_lm):
    server = serve()
    path = students["causal"].adapters["b"]
    relative = str(path.relative_to(students["causal"].run_dir))
    status, kind, reply = call(
        server, "POST", "/v1/load_lora_adapter", {"lora_name": "fresh", "lora_path": relative}
    )
    assert (status, reply["text"]) == (200, "Success: LoRA adapter 'fresh' added successfully.")
    try:
        ids = [c["id"] for c in call(server, "GET", "/v1/models")[2]["data"]]
        assert "fresh" in ids
        expected = local_lm().with_adapter("b").generate([ask(QUESTIONS[0])])[0].text
        assert client(server, "fresh").generate([ask(QUESTIONS[0])])[0].text == expected
        again = {"lora_name": "fresh", "lora_path": str(path)}
        status, _, reply = call(server, "POST", "/v1/load_lora_adapter", again)
        assert status == 400 and "already been loaded" in reply["error"]["message"]
        missing = {"lora_name": "other", "lora_path": "adapters/nothing-here"}
        status, _, reply = call(server, "POST", "/v1/load_lora_adapter", missing)
        assert status == 404 and "adapter_config.json" in reply["error"]["message"]
    finally:
        status, _, reply = call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "fresh"})
    assert (status, reply["text"]) == (200, "Success: LoRA adapter 'fresh' removed successfully.")
    assert "fresh" not in [c["id"] for c in call(server, "GET", "/v1/models")[2]["data"]]
    status, _, reply = call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "fresh"})
    assert (
        status == 404 and reply["error"]["message"] == "The lora adapter 'fresh' cannot be found."
    )
    with pytest.raises(LMRequestError) as refused:
        client(server, "fresh").generate([ask(QUESTIONS[0])])
    assert refused.value.status == 404 and "`fresh` does not exist" in str(refused.value)


def test_concurrent_requests_are_batched(serve, local_lm):
    server = serve()
    requests = [ask(QUESTIONS[i % 4]) for i in range(32)]
    adapters = [None, "a", "b"]
    expected = {
        (i, a): local_lm().with_adapter(a).generate([requests[i]])[0].texts
        for i in range(4)
        for a in adapters
    }
    lms = [client(server, adapter=a, concurrency=32) for a in adapters]
    stats = server.lm.stats
    before = stats.requests, stats.batches
    # three clients at once, each sending 32 requests over 32 connections
    import threading

    results: dict[int, list] = {}

    def run(k: int) -> None:
        results[k] = lms[k].generate(requests)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests_served, batches = stats.requests - before[0], stats.batches - before[1]
    assert requests_served == 96
    assert batches <= 96 // 4, f"96 concurrent requests took {batches} generate calls"
    for k, adapter in enumerate(adapters):
        for i, response in enumerate(results[k]):
            assert response.texts == expected[(i % 4, adapter)]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "`nope` does not exist",
        ),
        ({"messages": []}, 400, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "'role' one of"),
        (
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature must be a finite number",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "n": 0},
            400,
            "n must be an integer >= 1",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": -3},
            400,
            "max_tokens must be",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "top_p": 0},
            400,
            "top_p must be a finite number > 0",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "stop": [1]},
            400,
            "stop must be a string",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "stream": True},
            400,
            "stream=True is not supported",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs=True"),
    ],
)
def test_bad_requests_get_a_clear_4xx(serve, body, status, needle):
    server = serve()
    got, kind, reply = call(server, "POST", "/v1/chat/completions", body)
    assert (got, kind) == (status, "application/json")
    assert needle in reply["error"]["message"] and reply["error"]["code"] == status


def test_unknown_routes_and_methods(serve):
    server = serve()
    status, _, reply = call(server, "GET", "/v1/nothing")
    assert status == 404 and "/v1/chat/completions" in reply["error"]["message"]
    status, _, reply = call(server, "GET", "/v1/chat/completions")
    assert status == 405
    status, _, reply = call(server, "POST", "/v1/completions", {"prompt": 5})
    assert status == 400 and "'prompt' must be a string" in reply["error"]["message"]


def test_close_stops_serving_and_drops_kept_alive_connections(serve):
    server = serve()
    connection = http.client.HTTPConnection(*server.address, timeout=10)
    connection.request("GET", "/health")
    assert connection.getresponse().read() == b""  # a keep-alive connection, left open
    address = server.address
    server.close()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        connection.request("GET", "/health")
        connection.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)
