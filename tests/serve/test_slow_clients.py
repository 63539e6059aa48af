"""Clients that send little, slowly, or nothing: the key and route are checked from the head
before any body is read, a head or body that trickles is cut off by its own deadline, and
hundreds of trickling clients do not keep a normal client from being answered.

Every bound below is loose on purpose (seconds where milliseconds are expected) so that
a loaded 2-core machine does not break it; what fails before the fix fails by far more."""

from __future__ import annotations

import contextlib
import logging
import socket
import time

import pytest
from test_server import call

from apprentice.serve import httpd

WAIT_S = 10  # what an answer may take here; the old server took 30 s (its idle timeout) or never


def reply_to(connection: socket.socket, timeout: float = WAIT_S) -> bytes:
    """What the server sends until it closes the connection or ``timeout`` passes."""
    connection.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (chunk := connection.recv(65536)):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: x", *lines]) + "\r\n\r\n").encode()


BIG = f"Content-Length: {httpd.MAX_BODY_BYTES}"


def test_the_key_and_the_route_are_checked_before_the_body_is_read(serve):
    server = serve(api_key="s3cret")
    cases = [
        (head("/v1/chat/completions", BIG), b"401"),
        (head("/v1/chat/completions", BIG, "Authorization: Bearer wrong"), b"401"),
        (head("/v1/nowhere", BIG, "Authorization: Bearer s3cret"), b"404"),
        (head("/v1/models", BIG, "Authorization: Bearer s3cret"), b"405"),
    ]
    for raw, status in cases:  # the body is announced, never sent
        with socket.create_connection(server.address, timeout=WAIT_S) as connection:
            connection.sendall(raw)
            reply = reply_to(connection)
        assert reply.startswith(b"HTTP/1.1 " + status), (raw, reply[:80])
        assert b"Connection: close" in reply


def test_100_continue_is_sent_only_after_the_key_check(serve):
    server = serve(api_key="s3cret")
    expect = "Expect: 100-continue"
    with socket.create_connection(server.address, timeout=WAIT_S) as connection:
        connection.sendall(head("/v1/chat/completions", BIG, expect))
        reply = reply_to(connection)
    assert reply.startswith(b"HTTP/1.1 401") and b"100 Continue" not in reply
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    with socket.create_connection(server.address, timeout=WAIT_S) as connection:
        key = "Authorization: Bearer s3cret"
        connection.sendall(
            head("/v1/chat/completions", f"Content-Length: {len(body)}", key, expect)
        )
        connection.settimeout(WAIT_S)
        assert connection.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        connection.sendall(body)
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_client_silent_mid_body_gets_a_408_and_one_debug_line(serve, caplog):
    server = serve(idle_timeout=1.0)
    caplog.set_level(logging.DEBUG, logger="apprentice.serve")
    with socket.create_connection(server.address, timeout=WAIT_S) as connection:
        connection.sendall(head("/v1/chat/completions", "Content-Length: 100") + b'{"mess')
        reply = reply_to(connection)
    assert reply.startswith(b"HTTP/1.1 408") and b"silent for 1 s" in reply
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [r.getMessage() for r in caplog.records if "request body" in r.getMessage()]
    assert len(lines) == 1 and "silent for 1 s (6 of 100 bytes)" in lines[0]
    assert call(server, "GET", "/health")[0] == 200


def test_a_body_that_trickles_is_cut_off_at_its_deadline(serve, monkeypatch):
    monkeypatch.setattr(httpd, "BODY_TIMEOUT_S", 1.0)
    server = serve(idle_timeout=5.0)
    with socket.create_connection(server.address, timeout=WAIT_S) as connection:
        connection.sendall(head("/v1/chat/completions", "Content-Length: 100"))
        connection.setblocking(False)
        reply, deadline = b"", time.monotonic() + WAIT_S
        while not reply and time.monotonic() < deadline:  # a byte every 0.2 s: never silent
            connection.send(b" ")
            time.sleep(0.2)
            with contextlib.suppress(BlockingIOError):
                reply = connection.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408") and b"not whole after 1 s" in reply


def test_a_head_that_trickles_is_cut_off_at_its_deadline(serve):
    server = serve(idle_timeout=5.0)
    server._httpd.lobby.head_timeout = 1.0
    with socket.create_connection(server.address, timeout=WAIT_S) as connection:
        connection.setblocking(False)
        reply, deadline = b"", time.monotonic() + WAIT_S
        for byte in b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 1000:
            connection.send(bytes([byte]))
            time.sleep(0.2)
            try:
                reply = connection.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                continue
            if reply or time.monotonic() > deadline:
                break
    assert reply.startswith(b"HTTP/1.1 408")


TRICKLERS = 600  # the bar is 1,000: scripts/bench_slow_clients.py measures that


@pytest.mark.parametrize("per_client", [httpd.MAX_WAITING_PER_CLIENT, 50])
def test_trickling_clients_do_not_keep_a_normal_client_waiting(serve, per_client):
    """600 clients each sending a header byte a second against 64 request slots: before,
    they held every slot and the refusing thread spent ~1 s on each client past them, so a
    normal client got no answer. With a cap of 50 waiting connections per address, the
    tricklers (all from 127.0.0.1, as the normal client) push out their own oldest."""
    server = serve(max_connections=64, idle_timeout=30.0)
    server._httpd.lobby.max_per_client = per_client
    tricklers = []
    try:
        for _ in range(TRICKLERS):
            connection = socket.create_connection(server.address, timeout=WAIT_S)
            connection.setblocking(False)
            tricklers.append(connection)
        pieces = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100
        latencies = []
        for step in range(3):
            for connection in tricklers:
                with contextlib.suppress(OSError):  # closed by the server to make room
                    connection.send(pieces[step : step + 1])
            began = time.monotonic()
            status, _, _ = call(server, "GET", "/v1/models")
            latencies.append(time.monotonic() - began)
            assert status == 200
            time.sleep(1.0)
    finally:
        for connection in tricklers:
            connection.close()
    assert max(latencies) < 5.0, latencies  # the bar is 1 s: 5x for a loaded machine
    if per_client == 50:
        assert server._httpd.lobby.evicted >= TRICKLERS - 50
