"""The HTTP plumbing: framing, bounded connections, replies that always go out, and
request bodies that must be 400s rather than 500s once they reach the routes."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from test_server import call


def exchange(server, raw: bytes, timeout: float = 30) -> bytes:
    """Sends ``raw`` on a fresh connection and reads until the server closes it."""
    with socket.create_connection(server.address, timeout=timeout) as connection:
        connection.sendall(raw)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("length", ["-1", "+5", "5_0", " 1e3", "0x10", "\u00b2"])
def test_a_content_length_that_is_not_a_plain_number_is_refused_at_once(serve, length):
    server = serve()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    # The connection stays open on our side: an answer must not wait for the client to leave.
    reply = exchange(server, head.encode("latin-1") + b"{}")
    assert reply.startswith(b"HTTP/1.1 400") and b"Connection: close" in reply
    assert b"Content-Length must be" in reply


def test_conflicting_content_lengths_are_refused(serve):
    server = serve()
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\n{}"
    reply = exchange(server, head)
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length" in reply


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "\\ud800x", INPUT}', "surrogate"),
        (
            b'{"messages": [{"role": "user", "content": "\\ud800x"}], "prompt": "\\udfff"}',
            "surrogate",
        ),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{INPUT, "seed": 1180591620717411303424}', "seed"),
        (b'{INPUT, "temperature": NaN}', "finite"),
    ],
)
def test_bodies_the_routes_cannot_carry_are_400s(serve, body, needle):
    server = serve()
    inputs = {
        "/v1/chat/completions": b'"messages": [{"role": "user", "content": "x"}]',
        "/v1/completions": b'"prompt": "x"',
        "/v1/load_lora_adapter": b'"lora_name": "x", "lora_path": "adapters/a/adapter"',
        "/v1/unload_lora_adapter": b'"lora_name": "x"',
    }
    for path, fields in inputs.items():
        if needle == "seed" and "lora" in path:
            continue  # a seed only means something to generation
        status, kind, reply = call(server, "POST", path, body.replace(b"INPUT", fields))
        assert (status, kind) == (400, "application/json"), (path, reply)
        assert needle in reply["error"]["message"]
    assert call(server, "GET", "/v1/models")[0] == 200  # and the server still answers
    assert server.lm.adapter_names() == ["a", "b"]


def test_a_reply_that_cannot_be_encoded_still_goes_out(serve, monkeypatch):
    server = serve()
    names = {"odd\ud800": "a reply holding an unpaired surrogate"}
    monkeypatch.setitem(server.app.routes, ("GET", "/health"), lambda body, gone: (200, names))
    status, kind, reply = call(server, "GET", "/health")
    assert status == 200 and reply == names  # JSON escapes it: \\ud800 is valid JSON
    text = "text \ud800"
    monkeypatch.setitem(server.app.routes, ("GET", "/health"), lambda body, gone: (200, text))
    status, _, reply = call(server, "GET", "/health")
    assert status == 200 and reply["text"] == "text \\ud800"


def test_internal_errors_do_not_show_their_details(serve, monkeypatch):
    server = serve()

    def fail(body, gone):
        raise RuntimeError(f"cannot read {server.lm.model}/secret.bin")

    monkeypatch.setitem(server.app.routes, ("GET", "/health"), fail)
    status, _, reply = call(server, "GET", "/health")
    assert status == 500 and "RuntimeError" in reply["error"]["message"]
    assert str(server.lm.model) not in json.dumps(reply)


def test_requests_in_progress_are_bounded_and_idle_connections_are_closed(serve, monkeypatch):
    server = serve(max_connections=8, idle_timeout=2.0)
    release, started = threading.Event(), threading.Semaphore(0)

    def hold(body, gone):
        started.release()
        release.wait(60)
        return 200, None

    monkeypatch.setitem(server.app.routes, ("GET", "/health"), hold)
    threads_before = threading.active_count()
    held = [socket.create_connection(server.address, timeout=30) for _ in range(8)]
    idle = [socket.create_connection(server.address, timeout=30) for _ in range(8)]
    try:
        for connection in held:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in held:
            assert started.acquire(timeout=30)
        refused = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After" in refused
        assert threading.active_count() <= threads_before + 8
        for connection in idle:  # silent: the server closes each after its idle timeout
            assert connection.recv(1024) == b""
        release.set()
        for connection in held:
            assert connection.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        for connection in held + idle:
            connection.close()
    deadline = time.monotonic() + 30
    while server._httpd.open_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server._httpd.open_connections() == 0
    monkeypatch.undo()
    assert call(server, "GET", "/health")[0] == 200  # a slot is free again


def test_one_completions_request_holds_a_bounded_number_of_prompts(serve):
    server = serve()
    status, _, reply = call(server, "POST", "/v1/completions", {"prompt": ["x"] * 65})
    assert status == 400 and "1-64 strings" in reply["error"]["message"]
    status, _, reply = call(
        server, "POST", "/v1/completions", {"prompt": ["x"] * 3, "max_tokens": 1}
    )
    assert status == 200 and len(reply["choices"]) == 3


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "BREW"])
def test_any_method_gets_a_4xx_not_a_501(serve, method):
    server = serve()
    reply = exchange(
        server, f"{method} /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 405"), reply[:100]
    if method == "HEAD":
        assert reply.endswith(b"\r\n\r\n")  # headers only
    reply = exchange(
        server, f"{method} /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 404"), reply[:100]
