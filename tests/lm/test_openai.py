"""OpenAILM against a real HTTP server on loopback (tests/lm/stub_server.py)."""

from __future__ import annotations

import asyncio
import collections
import copy
import email.utils
import io
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

import pytest
from stub_server import Reply, StubServer

import apprentice as ap
from apprentice.formats import messages_to_prompt
from apprentice.lm import (
    LMError,
    LMRequestError,
    LMUnavailableError,
    OpenAILM,
    Price,
    Request,
    Response,
    Usage,
    keepalive,
)
from apprentice.lm.openai_retry import Retryable, RetryPolicy, retry_after
from apprentice.lm.registry import lm_from_config


def ask(text: str, **sampling) -> Request:
    return Request(messages=({"role": "user", "content": text},), **sampling)


def echo(seen):
    """A reply that repeats the request's last message: shows which answer went where."""
    return Reply(texts=f"echo: {seen.body['messages'][-1]['content']}")


# -- the request body ------------------------------------------------------------------------
def test_chat_body_has_model_messages_and_default_sampling(stub, make_lm):
    stub.queue(Reply(texts="Paris", usage=(12, 3)))
    response = make_lm("teacher").generate([ask("Capital of France?")])[0]
    assert stub.seen[0].path == "/v1/chat/completions"
    assert stub.bodies[0] == {
        "model": "teacher",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "temperature": 0.0,
        "max_tokens": 1024,
    }
    assert (response.text, response.usage.prompt_tokens, response.usage.completion_tokens) == (
        "Paris",
        12,
        3,
    )
    assert response.finish_reasons == ["stop"]
    assert response.model == "teacher"
    assert response.latency_s > 0 and not response.cached


def test_per_request_sampling_overrides_the_lm_defaults(stub, make_lm):
    stub.queue(Reply(texts=["a", "b", "c"]))
    lm = make_lm(temperature=0.3, max_tokens=64)
    request = ask("q", temperature=0.9, max_tokens=7, n=3, stop=("END", "\n\n"), top_p=0.5, seed=1)
    response = lm.generate([request])[0]
    body = stub.bodies[0]
    assert (body["temperature"], body["max_tokens"], body["n"]) == (0.9, 7, 3)
    assert (body["stop"], body["top_p"], body["seed"]) == (["END", "\n\n"], 0.5, 1)
    assert response.texts == ["a", "b", "c"]
    lm.generate([ask("q2")])
    assert (stub.bodies[1]["temperature"], stub.bodies[1]["max_tokens"]) == (0.3, 64)
    assert not {"n", "stop", "top_p", "seed"} & set(stub.bodies[1])


def test_lm_defaults_of_none_leave_sampling_to_the_server(stub, make_lm):
    make_lm(temperature=None, max_tokens=None, extra_body={"top_k": 5}).generate([ask("q")])
    assert stub.bodies[0] == {
        "model": "teacher",
        "messages": [{"role": "user", "content": "q"}],
        "top_k": 5,
    }


def test_a_lone_stop_string_is_one_stop_sequence(stub, make_lm):
    assert make_lm()("hi", stop="END") == ["hello"]
    assert stub.bodies[0]["stop"] == ["END"]


def test_adapter_name_is_sent_as_the_model_and_identity_keeps_both(stub, make_lm):
    lm = make_lm("base-llama", adapter="qa-lora", adapter_hash="abc123")
    lm.generate([ask("q")])
    assert stub.bodies[0]["model"] == "qa-lora"
    assert lm.identity == {
        "backend": "openai",
        "model": "base-llama",
        "adapter": "qa-lora",
        "adapter_hash": "abc123",
    }


def test_text_mode_posts_a_flattened_prompt_to_completions(stub, make_lm):
    stub.queue(Reply(texts=" the answer"))
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"})
    response = make_lm(model_type="text").generate([Request(messages=messages)])[0]
    assert stub.seen[0].path == "/v1/completions"
    assert stub.bodies[0]["prompt"] == messages_to_prompt(messages)
    assert "messages" not in stub.bodies[0]
    assert response.text == " the answer"


# -- HTTP: headers and connection pooling ------------------------------------------------------
def test_authorization_header_only_when_a_key_is_given(stub, make_lm, monkeypatch):
    make_lm(api_key="sk-test").generate([ask("q")])
    make_lm().generate([ask("q")])
    monkeypatch.setenv("MY_KEY", "sk-env")
    make_lm(api_key_env="MY_KEY").generate([ask("q")])
    assert stub.seen[0].headers["authorization"] == "Bearer sk-test"
    assert "authorization" not in stub.seen[1].headers
    assert stub.seen[2].headers["authorization"] == "Bearer sk-env"
    assert stub.seen[0].headers["content-type"] == "application/json"


def test_sequential_calls_reuse_one_keep_alive_connection_per_thread(stub, make_lm):
    lm = make_lm()
    for i in range(6):
        lm.generate([ask(f"q{i}")])
    assert lm.transport == "http.client"
    assert stub.connections == 1
    for i in range(3):
        lm.generate([ask(f"a{i}"), ask(f"b{i}")])  # a batch runs on the pool's threads
    assert len(stub.seen) == 12
    assert stub.connections <= 3  # this thread's and one per pool thread, kept across batches


def test_threads_have_one_connection_each_and_close_it_when_they_end(stub, make_lm):
    lm = make_lm()
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for i in range(5):
            assert lm.generate([ask(f"t{t} q{i}")])[0].text == "hello"

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(stub.seen) == 20
    per_connection = collections.Counter(seen.client for seen in stub.seen)
    assert sorted(per_connection.values()) == [5, 5, 5, 5]
    # A thread that ended closed its connection (not left to the garbage collector, which
    # would warn "unclosed socket"): the server sees all four end.
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert lm._connections.open_connections == 0 and len(lm._connections._slots) == 0
    deadline = time.monotonic() + 5
    while len(stub.closed) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub.closed == set(per_connection)


def test_close_closes_every_threads_connection_and_the_lm_stays_usable(stub, make_lm):
    lm = make_lm(concurrency=2)
    stub.respond = lambda seen: Reply(delay=0.05)  # both pool threads get a request
    lm.generate([ask("main")])
    lm.generate([ask("a"), ask("b")])
    assert lm._connections.open_connections == 3  # this thread and two live pool threads
    lm.close()
    assert lm._connections.open_connections == 0
    deadline = time.monotonic() + 5
    while len(stub.closed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub.closed == {seen.client for seen in stub.seen}  # the server saw all three end
    assert lm.generate([ask("again")])[0].text == "hello"
    assert stub.connections == 4  # a new connection after close


def _call_in_child(lm: OpenAILM) -> None:
    sys.exit(0 if lm.generate([ask("child")])[0].text == "hello" else 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(stub, make_lm):
    lm = make_lm()
    lm.generate([ask("parent")])
    child = multiprocessing.get_context("fork").Process(target=_call_in_child, args=(lm,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    lm.generate([ask("parent again")])
    clients = [seen.client for seen in stub.seen]
    # Never the parent's socket: two processes would read each other's replies.
    assert clients[0] == clients[2] != clients[1]


def test_a_keep_alive_connection_the_server_dropped_is_reopened_without_a_retry(stub, make_lm):
    stub.queue(Reply(texts="first", drop=True), Reply(texts="second"))
    lm = make_lm(max_retries=0, retry_backoff=10.0)
    assert lm.generate([ask("q1")])[0].text == "first"
    time.sleep(0.05)  # the server has closed its end; the client does not know yet
    start = time.monotonic()
    assert lm.generate([ask("q2")])[0].text == "second"  # max_retries=0: no attempt was spent
    assert time.monotonic() - start < 1  # no backoff either
    assert len(stub.seen) == 2 and stub.connections == 2


def test_a_fresh_connection_that_is_hung_up_on_counts_as_a_failed_attempt(stub, make_lm):
    stub.default = Reply(hang_up=True)
    with pytest.raises(LMUnavailableError, match=r"2 attempt\(s\): connection error: Remote"):
        make_lm(max_retries=1).generate([ask("q")])
    assert len(stub.seen) == 2  # one request per attempt, no hidden extra


@pytest.fixture
def tls_stub(tmp_path):
    """The stub behind TLS with a self-signed certificate for 127.0.0.1: (server, cert file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = StubServer()
    server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
    server.start()
    yield server, cert
    server.stop()


def test_https_verifies_the_server_with_one_shared_context(tls_stub, monkeypatch):
    server, cert = tls_stub
    url = server.url.replace("http://", "https://")
    monkeypatch.setattr(keepalive, "_ssl_context", None)  # the default: system CAs only
    untrusted = OpenAILM("teacher", base_url=url, max_retries=0, cache=False)
    with pytest.raises(LMUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.generate([ask("q")])
    untrusted.close()
    assert server.seen == []

    monkeypatch.setattr(keepalive, "_ssl_context", ssl.create_default_context(cafile=cert))
    lm = OpenAILM("teacher", base_url=url, api_key="sk-tls", cache=False)
    try:
        for i in range(3):
            assert lm.generate([ask(f"q{i}")])[0].text == "hello"
    finally:
        lm.close()
    assert [seen.path for seen in server.seen] == ["/v1/chat/completions"] * 3
    assert server.seen[0].headers["authorization"] == "Bearer sk-tls"
    assert server.connections == 1  # one TLS handshake, then keep-alive


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_a_proxy_from_the_environment_sends_sync_calls_through_httpx(stub, no_proxy_env):
    # The stub doubles as the proxy: it sees the absolute URL of the real endpoint.
    no_proxy_env.setenv("HTTP_PROXY", stub.url.removesuffix("/v1"))
    lm = OpenAILM("teacher", base_url="http://api.example.invalid/v1", cache=False)
    try:
        assert lm.generate([ask("q")])[0].text == "hello"
        assert lm.transport == "httpx" and lm._connections is None
    finally:
        lm.close()
    assert stub.seen[0].path == "http://api.example.invalid/v1/chat/completions"


def test_no_proxy_keeps_the_direct_stdlib_transport(stub, make_lm, no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # not for an http:// endpoint
    assert make_lm().transport == "http.client"
    no_proxy_env.setenv("ALL_PROXY", "http://127.0.0.1:9")
    no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    lm = make_lm()
    assert lm.generate([ask("q")])[0].text == "hello"
    assert lm.transport == "http.client"


def test_both_transports_send_the_same_bytes(stub, make_lm, no_proxy_env):
    request = ask("naïve — 東京?", temperature=0.5, stop=("END",))
    make_lm().generate([request])
    no_proxy_env.setenv("HTTP_PROXY", stub.url.removesuffix("/v1"))
    proxied = OpenAILM("teacher", base_url="http://127.0.0.1:1/v1", cache=False)
    try:
        proxied.generate([request])
    finally:
        proxied.close()
    assert stub.raw_bodies[0] == stub.raw_bodies[1]
    assert (
        stub.raw_bodies[0]
        == json.dumps(stub.bodies[0], ensure_ascii=False, separators=(",", ":")).encode()
    )


def test_sync_and_async_send_the_same_bytes_and_read_the_same_response(stub, make_lm):
    choices = [
        {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
    ]
    reply = {"choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    stub.default = Reply(raw=json.dumps(reply).encode())  # names no model
    lm = make_lm("base-llama", adapter="qa-lora")
    request = ask("naïve?", temperature=0.5, n=2, stop=("END",))
    done = lm.generate([request])[0], asyncio.run(lm.agenerate([request]))[0]
    assert stub.raw_bodies[0] == stub.raw_bodies[1]
    assert stub.bodies[0]["model"] == "qa-lora"
    for response in done:
        assert (response.texts, response.finish_reasons) == (["a", "b"], ["stop", "length"])
        assert response.usage == Usage(7, 2)
        assert response.model == "base-llama"  # the reply named none: the LM's base model


# -- retries ----------------------------------------------------------------------------------
def test_429_waits_for_retry_after_then_succeeds(stub, make_lm):
    stub.queue(Reply(status=429, headers={"Retry-After": "0.3"}), Reply(texts="ok"))
    response = make_lm(retry_backoff=10.0).generate([ask("q")])[0]
    assert response.text == "ok"
    waited = stub.seen[1].at - stub.seen[0].at
    # Retry-After replaces the (here huge) exponential backoff.
    assert 0.3 <= waited < 0.8, waited


def test_retry_after_is_capped_by_retry_max_wait(stub, make_lm):
    stub.queue(Reply(status=503, headers={"Retry-After": "30"}), Reply(texts="ok"))
    start = time.monotonic()
    assert make_lm(retry_max_wait=0.05).generate([ask("q")])[0].text == "ok"
    assert time.monotonic() - start < 2


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after("2") == 2.0
    assert retry_after("-4") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < retry_after(in_ten) <= 10


def test_backoff_is_exponential_with_full_jitter_and_capped(make_lm):
    policy = make_lm(retry_backoff=0.5, retry_max_wait=3.0)._start(ask("q")).retries
    assert policy == RetryPolicy(max_retries=6, backoff=0.5, max_wait=3.0)
    failure = Retryable("HTTP 503", 503)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):
        delays = [policy.delay(failure, attempt) for _ in range(300)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread, not fixed
    assert policy.delay(Retryable("HTTP 429", 429, retry_after=1.5), 1) == 1.5
    assert policy.delay(Retryable("HTTP 429", 429, retry_after=100), 1) == 3.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses_are_retried_then_succeed(stub, make_lm, status):
    stub.queue(Reply(status=status), Reply(status=status), Reply(texts="ok"))
    assert make_lm(max_retries=2).generate([ask("q")])[0].text == "ok"
    assert len(stub.seen) == 3


def test_persistent_503_fails_clearly_after_every_attempt(stub, make_lm):
    stub.default = Reply(status=503)
    with pytest.raises(LMUnavailableError) as err:
        make_lm("teacher", max_retries=3).generate([ask("q")])
    assert len(stub.seen) == 4
    assert (err.value.status, err.value.attempts) == (503, 4)
    message = str(err.value)
    assert "4 attempt(s)" in message and "HTTP 503" in message and "stub says 503" in message
    assert stub.url in message and "'teacher'" in message


def test_timeouts_are_retried_then_fail_clearly(stub, make_lm):
    stub.default = Reply(delay=2.0)
    start = time.monotonic()
    with pytest.raises(LMUnavailableError, match=r"2 attempt\(s\): timed out after 0.2s") as err:
        make_lm(timeout=0.2, max_retries=1).generate([ask("q")])
    assert time.monotonic() - start < 1.5  # neither attempt waited for the slow reply
    assert err.value.attempts == 2 and err.value.status is None
    assert len(stub.seen) == 2


def test_a_timeout_then_a_prompt_answer_succeeds(stub, make_lm):
    stub.queue(Reply(delay=1.0), Reply(texts="ok"))
    assert make_lm(timeout=0.2).generate([ask("q")])[0].text == "ok"


def test_connection_refused_is_retried_then_fails_clearly(make_lm):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lm = make_lm(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(LMUnavailableError, match=r"3 attempt\(s\): connection error"):
        lm.generate([ask("q")])


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_fail_at_once_naming_status_and_server_message(stub, make_lm, status):
    stub.queue(Reply(status=status))
    with pytest.raises(LMRequestError) as err:
        make_lm("teacher", max_retries=5).generate([ask("q")])
    assert len(stub.seen) == 1
    assert err.value.status == status
    assert f"HTTP {status}: stub says {status}" in str(err.value)
    assert "'teacher'" in str(err.value)
    assert json.loads(err.value.body)["error"]["message"] == f"stub says {status}"


def test_a_non_json_error_body_is_quoted_as_text(stub, make_lm):
    stub.queue(Reply(status=400, raw=b"<html>bad gateway config</html>"))
    with pytest.raises(LMRequestError, match="HTTP 400: <html>bad gateway config</html>"):
        make_lm().generate([ask("q")])


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all",
        b'{"choices": []}',
        b'{"no_choices": 1}',
        b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}',
    ],
)
def test_malformed_200_bodies_are_retried_then_fail_clearly(stub, make_lm, raw):
    stub.default = Reply(raw=raw)
    with pytest.raises(LMUnavailableError, match=r"2 attempt\(s\): malformed reply") as err:
        make_lm(max_retries=1).generate([ask("q")])
    assert repr(raw[:20])[2:-1] in str(err.value)
    assert len(stub.seen) == 2


def _chat_reply(content="x", usage=None, choices=None) -> bytes:
    choices = choices if choices is not None else [{"message": {"content": content}}]
    body = json.dumps({"choices": choices, **({"usage": usage} if usage is not None else {})})
    return body.encode()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_chat_reply(content=5), "choice 0: content must be a string or null, got int 5"),
        (_chat_reply(content={"a": 1}), "content must be a string or null, got dict"),
        (_chat_reply(content=["x"]), "content must be a string or null, got list"),
        (b"[1, 2]", "the body must be a JSON object, got list"),
        (_chat_reply(choices={"0": {}}), "choices must be a list, got dict"),
        (_chat_reply(choices=["x"]), "choice 0 must be an object, got str"),
        (_chat_reply(choices=[{"message": "x"}]), "choice 0: message must be an object"),
        (_chat_reply(usage=[1, 2]), "usage must be an object or null, got list"),
        (_chat_reply(usage={"prompt_tokens": -3}), "prompt_tokens must be an integer >= 0, got -3"),
        (_chat_reply(usage={"completion_tokens": 2.5}), "completion_tokens must be an integer"),
        (_chat_reply(usage={"prompt_tokens": True}), "prompt_tokens must be an integer"),
        (
            _chat_reply().replace(b"}]}", b'}], "usage": {"prompt_tokens": Infinity}}'),
            "prompt_tokens must be an integer >= 0, got inf",
        ),
        (
            _chat_reply().replace(b"}]}", b'}], "usage": {"completion_tokens": 1e999}}'),
            "completion_tokens must be an integer >= 0, got inf",
        ),
    ],
)
def test_a_reply_of_the_wrong_shape_is_a_malformed_reply_naming_what_is_wrong(
    stub, make_lm, raw, why
):
    # Never a raw TypeError/OverflowError, never a non-string text or a negative count.
    stub.default = Reply(raw=raw)
    with pytest.raises(LMUnavailableError, match=r"2 attempt\(s\): malformed reply") as err:
        make_lm(max_retries=1).generate([ask("q")])
    assert why in str(err.value)


def test_the_async_path_applies_the_same_reply_checks(stub, make_lm):
    stub.default = Reply(raw=_chat_reply(content=5))
    with pytest.raises(LMUnavailableError, match="content must be a string or null, got int 5"):
        asyncio.run(make_lm(max_retries=0).agenerate([ask("q")]))


def test_a_text_completion_whose_text_is_not_a_string_is_malformed(stub, make_lm):
    stub.default = Reply(raw=b'{"choices": [{"text": 7}]}')
    with pytest.raises(
        LMUnavailableError, match="choice 0: text must be a string or null, got int"
    ):
        make_lm(model_type="text", max_retries=0).generate([ask("q")])


def test_fewer_choices_than_n_is_malformed_and_more_are_cut_to_n(stub, make_lm):
    stub.queue(Reply(texts=["a"]), Reply(texts=["a", "b"]))
    response = make_lm(max_retries=1).generate([ask("q", n=2)])[0]
    assert response.texts == ["a", "b"] and len(stub.seen) == 2  # the short reply was retried
    stub.default = Reply(texts=["a"])
    with pytest.raises(LMUnavailableError, match=r"1 choice\(s\) for n=2"):
        make_lm(max_retries=0).generate([ask("q", n=2)])
    stub.default = Reply(texts=["c", "a", "b"])
    assert make_lm().generate([ask("q", n=2)])[0].texts == ["c", "a"]


def test_null_content_and_missing_usage_are_empty_text_and_zero_tokens(stub, make_lm):
    stub.default = Reply(raw=_chat_reply(content=None, usage={"prompt_tokens": None}))
    response = make_lm().generate([ask("q")])[0]
    assert response.texts == [""] and response.usage == Usage(0, 0)


def test_a_malformed_reply_then_a_good_one_succeeds(stub, make_lm):
    stub.queue(Reply(raw=b"{"), Reply(texts="ok"))
    assert make_lm().generate([ask("q")])[0].text == "ok"


# -- size cap and total deadline ----------------------------------------------------------------
def _big_reply(size: int) -> bytes:
    return _chat_reply(content="x" * size)


@pytest.mark.parametrize("unsized", [False, True], ids=["content-length", "no-length"])
@pytest.mark.parametrize("transport", ["http.client", "httpx", "async"])
def test_a_reply_over_max_reply_bytes_fails_at_once_naming_the_cap(
    stub, make_lm, no_proxy_env, transport, unsized
):
    stub.default = Reply(raw=_big_reply(5000), unsized=unsized)
    if transport == "httpx":
        no_proxy_env.setenv("HTTP_PROXY", stub.url.removesuffix("/v1"))
        lm = make_lm(base_url="http://127.0.0.1:1/v1", max_reply_bytes=4096)
    else:
        lm = make_lm(max_reply_bytes=4096)
    call = lm.generate if transport != "async" else lambda r: asyncio.run(lm.agenerate(r))
    with pytest.raises(LMError, match=r"larger than max_reply_bytes=4096 \(0.0 MiB; ") as err:
        call([ask("q")])
    assert "OpenAILM(..., max_reply_bytes=" in str(err.value)
    assert len(stub.seen) == 1  # not retried: the same request would bring the same reply
    stub.default = Reply(raw=_big_reply(3000), unsized=unsized)
    assert call([ask("q")])[0].text == "x" * 3000  # under the cap, the LM still works


def test_max_reply_bytes_defaults_to_16_mib_and_is_saved(make_lm):
    lm = make_lm()
    assert lm.max_reply_bytes == 16 * 2**20 and lm.to_config()["max_reply_bytes"] == 16 * 2**20
    assert lm.total_timeout_s == 600.0 and lm.to_config()["total_timeout_s"] == 600.0


@pytest.mark.parametrize("transport", ["http.client", "httpx", "async"])
def test_a_trickling_reply_is_cut_off_at_the_total_deadline(stub, make_lm, no_proxy_env, transport):
    # One byte every 0.1 s never trips the 5 s per-read timeout; only the deadline stops it.
    stub.default = Reply(trickle=0.1)
    options = {"timeout": 5.0, "total_timeout_s": 1.0, "max_retries": 3}
    if transport == "httpx":
        no_proxy_env.setenv("HTTP_PROXY", stub.url.removesuffix("/v1"))
        options["base_url"] = "http://127.0.0.1:1/v1"
    lm = make_lm(**options)
    call = lm.generate if transport != "async" else lambda r: asyncio.run(lm.agenerate(r))
    start = time.monotonic()
    with pytest.raises(LMUnavailableError, match=r"total_timeout_s=1.0"):
        call([ask("q")])
    # The body is ~250 bytes: 25 s at that pace. Loose bound, for a loaded machine.
    assert time.monotonic() - start < 10
    assert len(stub.seen) == 1  # no retry starts after the deadline


def test_the_total_deadline_stops_retries_that_would_outlast_it(stub, make_lm):
    stub.default = Reply(status=503, headers={"Retry-After": "30"})
    start = time.monotonic()
    with pytest.raises(LMUnavailableError, match=r"1 attempt\(s\).*total_timeout_s=2") as err:
        make_lm(total_timeout_s=2, max_retries=5, retry_max_wait=30).generate([ask("q")])
    assert time.monotonic() - start < 10 and err.value.status == 503
    assert len(stub.seen) == 1


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_reply_bytes": 0}, "max_reply_bytes must be an integer >= 1, got 0"),
        ({"max_reply_bytes": 1.5}, "got 1.5"),
        ({"total_timeout_s": 0}, "total_timeout_s must be > 0"),
        ({"total_timeout_s": "long"}, "'long'"),
    ],
)
def test_bad_cap_and_deadline_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        OpenAILM("m", base_url="http://127.0.0.1:9/v1", **options)


# -- batches, concurrency, async --------------------------------------------------------------
def test_a_batch_never_has_more_than_concurrency_requests_in_flight(stub, make_lm):
    stub.respond = lambda seen: Reply(texts=echo(seen).texts, delay=0.05)
    lm = make_lm(concurrency=4)
    responses = lm.generate([ask(f"q{i}") for i in range(16)])
    assert [r.text for r in responses] == [f"echo: q{i}" for i in range(16)]
    assert stub.max_in_flight == 4


def test_return_exceptions_gives_per_request_failures(stub, make_lm):
    def respond(seen):
        return Reply(status=400) if "bad" in seen.body["messages"][-1]["content"] else echo(seen)

    stub.respond = respond
    lm = make_lm()
    batch = [ask("good 1"), ask("bad"), ask("good 2")]
    results = lm.generate(batch, return_exceptions=True)
    assert isinstance(results[0], Response) and results[0].text == "echo: good 1"
    assert isinstance(results[1], LMRequestError) and results[1].status == 400
    assert results[2].text == "echo: good 2"
    with pytest.raises(LMRequestError, match="HTTP 400"):
        lm.generate(batch)
    shown = lm.inspect_history(3, file=io.StringIO())
    assert shown.count("--- error ---") == 1 and "HTTP 400" in shown


def test_agenerate_answers_many_requests_within_the_concurrency_limit(stub, make_lm):
    stub.respond = lambda seen: Reply(texts=echo(seen).texts, delay=0.02)
    lm = make_lm(concurrency=8)
    responses = asyncio.run(lm.agenerate([ask(f"q{i}") for i in range(60)]))
    assert [r.text for r in responses] == [f"echo: q{i}" for i in range(60)]
    assert 1 < stub.max_in_flight <= 8


def test_agenerate_retries_and_returns_exceptions(stub, make_lm):
    stub.queue(Reply(status=429, headers={"Retry-After": "0.1"}))
    stub.respond = None

    def respond(seen):
        if "bad" in seen.body["messages"][-1]["content"]:
            return Reply(status=404)
        return stub.replies.popleft() if stub.replies else echo(seen)

    stub.respond = respond
    lm = make_lm(concurrency=1)
    results = asyncio.run(lm.agenerate([ask("one"), ask("bad")], return_exceptions=True))
    assert results[0].text == "echo: one"
    assert isinstance(results[1], LMRequestError) and results[1].status == 404
    stub.respond, stub.default = None, Reply(status=500)
    with pytest.raises(LMUnavailableError, match=r"3 attempt\(s\): HTTP 500"):
        asyncio.run(make_lm(max_retries=2).agenerate([ask("q")]))


def test_repeated_asyncio_runs_do_not_pile_up_clients(stub, make_lm):
    lm = make_lm()
    for i in range(5):
        assert asyncio.run(lm.agenerate([ask(f"q{i}")]))[0].text == "hello"
    assert len(lm._async) == 1  # only the newest loop's client is kept


# -- cache --------------------------------------------------------------------------------------
def test_second_identical_call_is_served_from_the_cache(stub, make_lm):
    lm = make_lm(cache=True)
    first = lm.generate([ask("q")])[0]
    second = lm.generate([ask("q")])[0]
    assert len(stub.seen) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.texts == first.texts and second.usage == first.usage
    assert (lm.cache.hits, lm.cache.misses) == (1, 1)
    # A new LM with the same settings shares the same on-disk answers.
    assert make_lm(cache=True).generate([ask("q")])[0].cached
    assert len(stub.seen) == 1


@pytest.mark.parametrize(
    "changed",
    [
        {"model": "other-model"},
        {"adapter": None, "adapter_hash": None},
        {"adapter": "lora-b"},
        {"adapter_hash": "v2"},
        {"model_type": "text"},
        {"temperature": 0.7},
        {"max_tokens": 10},
        {"extra_body": {"top_k": 3}},
    ],
)
def test_anything_that_changes_the_request_or_identity_misses_the_cache(stub, make_lm, changed):
    base = {"model": "teacher", "adapter": "lora-a", "adapter_hash": "v1"}
    make_lm(**base, cache=True).generate([ask("q")])
    options = {**base, **changed}
    response = make_lm(options.pop("model"), **options, cache=True).generate([ask("q")])[0]
    assert not response.cached
    assert len(stub.seen) == 2


def test_rollout_and_sampling_make_distinct_cache_entries(stub, make_lm):
    lm = make_lm(cache=True)
    lm.generate([ask("q"), ask("q", rollout=1), ask("q", temperature=1.0), ask("q", n=2)])
    lm.generate([ask("q", rollout=1)])
    assert len(stub.seen) == 4


@pytest.mark.parametrize("how", ["argument", "env", "enabled"])
def test_the_cache_can_be_switched_off(stub, make_lm, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("APPRENTICE_CACHE", "0")
    lm = make_lm(cache=how != "argument")
    if how == "enabled":
        lm.cache.enabled = False
    else:
        assert lm.cache is None
    lm.generate([ask("q")])
    assert not lm.generate([ask("q")])[0].cached
    assert len(stub.seen) == 2
    if how == "enabled":
        assert (lm.cache.hits, lm.cache.misses, len(lm.cache)) == (0, 0, 0)


def test_failures_are_not_cached(stub, make_lm):
    stub.queue(Reply(status=400))
    lm = make_lm(cache=True)
    lm.generate([ask("q")], return_exceptions=True)
    assert lm.generate([ask("q")])[0].text == "hello"
    assert len(stub.seen) == 2


# -- usage, cost, history -----------------------------------------------------------------------
def test_usage_totals_and_cost_and_cached_calls_cost_nothing(stub, make_lm):
    stub.default = Reply(usage=(1000, 200))
    lm = make_lm(cache=True, price=Price(input=0.5, output=2.0))
    lm.generate([ask("a"), ask("b"), ask("c")])
    lm.generate([ask("a")])  # cached
    assert lm.usage.summary() == {
        "calls": 3,
        "cached_calls": 1,
        "prompt_tokens": 3000,
        "completion_tokens": 600,
        "cost_usd": pytest.approx((3000 * 0.5 + 600 * 2.0) / 1e6),
    }
    assert make_lm().usage.cost is None  # no price set, no made-up cost
    lm.usage.reset()
    assert lm.usage.summary()["calls"] == 0


def test_history_is_bounded_and_inspect_history_shows_prompt_and_completion(stub, make_lm):
    stub.respond = echo
    lm = make_lm(history_size=3)
    for i in range(5):
        lm.generate([ask(f"question {i}")])
    assert len(lm.history) == 3
    out = io.StringIO()
    text = lm.inspect_history(2, file=out)
    assert out.getvalue() == text + "\n"
    assert "question 3" in text and "echo: question 4" in text
    assert "question 2" not in text
    assert "--- user ---" in text and "--- completion 0 ---" in text


# -- config, copies, bad input -------------------------------------------------------------------
def test_to_config_has_no_secret_and_rebuilds_an_equivalent_lm(stub, make_lm, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-from-env")
    lm = make_lm(
        "teacher",
        api_key="sk-secret",
        api_key_env="STUB_KEY",
        adapter="lora",
        adapter_hash="h1",
        temperature=0.2,
        max_tokens=99,
        concurrency=3,
        timeout=5.0,
        max_retries=1,
        retry_max_wait=2.0,
        extra_body={"top_k": 3},
        price=Price(input=1.0, output=3.0),
        history_size=7,
    )
    config = lm.to_config()
    assert "sk-secret" not in json.dumps(config)
    rebuilt = lm_from_config(json.loads(json.dumps(config)), trusted=True)  # our own config
    assert isinstance(rebuilt, OpenAILM) and rebuilt is not lm
    assert rebuilt.to_config() == config
    assert rebuilt.identity == lm.identity
    assert rebuilt.usage.price == Price(input=1.0, output=3.0)
    rebuilt.generate([ask("q")])
    rebuilt.close()
    assert stub.bodies[0]["model"] == "lora" and stub.bodies[0]["top_k"] == 3
    assert stub.seen[0].headers["authorization"] == "Bearer sk-from-env"


def test_a_saved_program_keeps_its_lm(stub, make_lm, tmp_path):
    qa = ap.Predict("question -> answer", lm=make_lm("teacher", adapter="qa"))
    qa.save(tmp_path / "program.json")
    loaded = ap.Predict("question -> answer")
    loaded.load(tmp_path / "program.json", trusted=True)  # a file this test wrote
    assert loaded.lm.identity == qa.lm.identity
    loaded.lm.close()


def test_deepcopy_shares_the_lm(make_lm):
    lm = make_lm()
    assert copy.deepcopy(lm) is lm
    assert copy.deepcopy({"lm": lm})["lm"] is lm


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"model_type": "json"}, "'json'"),
        ({"concurrency": 0}, "got 0"),
        ({"concurrency": 2.5}, "got 2.5"),
        ({"max_retries": -1}, "got -1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": "fast"}, "'fast'"),
        ({"retry_backoff": -0.1}, "got -0.1"),
        ({"base_url": "127.0.0.1:8000/v1"}, "'127.0.0.1:8000/v1'"),
        ({"history_size": -1}, "got -1"),
        ({"cache": 3}, "int 3"),
    ],
)
def test_bad_options_are_named(options, named):
    with pytest.raises((ValueError, TypeError)) as err:
        OpenAILM("m", **{"base_url": "http://127.0.0.1:9/v1", **options})
    assert named in str(err.value)


def test_bad_requests_and_configs_are_named(make_lm):
    lm = make_lm()
    with pytest.raises(TypeError, match="list of Request, got Request"):
        lm.generate(ask("q"))
    with pytest.raises(TypeError, match="got an item of type str: 'q'"):
        lm.generate(["q"])
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        ask("q", n=0)
    with pytest.raises(ValueError, match="at least one message"):
        Request(messages=())
    with pytest.raises(ValueError, match="model must be a non-empty string, got ''"):
        OpenAILM("", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="backend 'nope'"):
        lm_from_config({"backend": "nope", "model": "m"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        lm_from_config({"backend": "openai", "model": "m", "colour": "red"})
    assert lm.generate([]) == []


def test_a_reply_with_a_lone_surrogate_fails_that_request_and_is_never_cached(
    stub, make_lm, tmp_path
):
    # JSON's "\ud800" escape reads as a str that no UTF-8 file can hold.
    surrogate = b'{"choices": [{"message": {"content": "ok \\ud800 then"}}]}'
    stub.respond = lambda seen: (
        Reply(raw=surrogate) if "bad" in seen.body["messages"][-1]["content"] else Reply("fine")
    )
    lm = make_lm(max_retries=1, cache=str(tmp_path / "cache.sqlite"))
    good, bad = lm.generate([ask("good"), ask("bad")], return_exceptions=True)
    assert good.texts == ["fine"]
    # Before: a Response holding '\ud800', cached, which then failed every trace write.
    assert isinstance(bad, LMError)
    assert "lone surrogate '\\ud800' at character 3" in str(bad)
    assert len(lm.cache) == 1  # the good reply only


def test_a_reply_nested_100000_deep_is_an_lm_error_not_a_recursion_error(stub, make_lm):
    deep = b"[" * 100_000 + b"]" * 100_000
    stub.default = Reply(raw=deep)
    # Before: RecursionError escaped from json.loads (only ValueError was caught).
    with pytest.raises(LMUnavailableError, match="nested too deeply"):
        make_lm(max_retries=0).generate([ask("q")])
    # The same body as an error document: the status is reported, the body quoted as text.
    stub.default = Reply(raw=b'{"error": ' + deep + b"}", status=400)
    with pytest.raises(LMRequestError, match="HTTP 400"):
        make_lm(max_retries=0).generate([ask("q")])
