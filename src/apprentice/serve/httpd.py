"""The HTTP plumbing under apprentice's servers (``server.Server``, ``vllm_gateway.Gateway``),
on the stdlib ``ThreadingHTTPServer``: one thread per connection, and an app object whose
``handle(method, target, headers, body, client_gone)`` returns (status, payload) or raises
``HTTPError``.

What a connection may do is bounded here: at most ``max_connections`` are open (the next
get a 503 from one refusing thread, without a thread of their own), a connection silent
for ``idle_timeout`` is closed, a body must come with one plain Content-Length of at most
``MAX_BODY_BYTES``, and a reply always goes out (JSON as ASCII, text with escapes; a 500
says only the exception's type, the log has the rest). A payload may be a ``Relay``:
another server's reply passed through as it arrives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apprentice.serve.protocol import ClientGone, HTTPError, error_body

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "HTTPServer",
    "HTTPServer6",
    "Relay",
    "client_gone",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20
MAX_CONNECTIONS = 512  # open connections (one thread each); more get a 503 at once
IDLE_TIMEOUT_S = 30.0  # a connection silent this long (between or inside requests) is closed
_LENGTH = re.compile(r"[0-9]{1,20}")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: OpenAILM holds one connection per thread
    server_version = "apprentice"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def __getattr__(self, name: str):
        """``do_<METHOD>`` for every method: the app answers (404, 405) where http.server
        would send a 501 for a method it has no handler for."""
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method == "POST" else b""
            status, payload = self.server.app.handle(
                method, self.path, self.headers, body, self._client_gone
            )
        except ClientGone:
            self.close_connection = True
            return
        except HTTPError as exc:
            status, payload = exc.status, error_body(exc.status, exc.message, exc.param)
        except Exception as exc:  # the details (paths, values) go to the log, not the client
            log.exception("%s %s failed", method, self.path)
            message = f"internal error ({type(exc).__name__}); the server's log has the details"
            status, payload = 500, error_body(500, message)
        self._send(status, payload)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length, not chunked")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        text = values.pop() if len(values) == 1 else "0" if not values else None
        if text is None or not _LENGTH.fullmatch(text):
            self.close_connection = True  # the body's end is unknown: the connection cannot go on
            shown = sorted(self.headers.get_all("Content-Length"))
            raise HTTPError(400, f"Content-Length must be one non-negative integer, got {shown}")
        length = int(text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise HTTPError(413, f"request body of {length} bytes is over {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _client_gone(self) -> bool:
        """Whether the client has closed its side (it sends nothing while it waits)."""
        return client_gone(self.connection)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, Relay):
            self._relay(status, payload)
            return
        try:
            data, kind = _encode(payload)
        except Exception:  # never leave a client without an answer
            log.exception("cannot encode the reply to %s", self.path)
            status = 500
            data, kind = _encode(error_body(500, "internal error: the reply could not be encoded"))
        try:
            self._head(status, kind, len(data))
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client left (or timed out): nothing to tell it
            self.close_connection = True

    def _head(self, status: int, kind: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _relay(self, status: int, relay: Relay) -> None:
        """Passes another server's reply through as it arrives (chunked when its length is
        unknown, as a stream is); a client that leaves ends the upstream request."""
        try:
            self._head(status, relay.content_type, relay.length)
            if self.command == "HEAD":
                return
            for chunk in relay.chunks:
                if relay.length is None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
                self.wfile.flush()
            if relay.length is None:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            relay.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


@dataclass
class Relay:
    """A reply passed through from another server: its chunks as they come, their total
    length if known (else the reply is sent chunked), and what to close once sent."""

    content_type: str
    chunks: Iterable[bytes]
    length: int | None = None
    close: Callable[[], None] = lambda: None


def _encode(payload: Any) -> tuple[bytes, str]:
    """(bytes, content type) of a route's payload; JSON is ASCII, so any string goes out."""
    if isinstance(payload, str):
        return payload.encode("utf-8", "backslashreplace"), "text/plain; charset=utf-8"
    if payload is None:
        return b"", "text/plain; charset=utf-8"
    return json.dumps(payload).encode("ascii"), "application/json"


def client_gone(connection: socket.socket) -> bool:
    """True when the peer closed the connection: it is readable and a peek reads nothing.
    A pipelined next request makes it readable too, but a peek then returns data."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset, or already closed
        return True


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of clients connecting at once (a
    # program run over many threads) would see connections reset.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, app: Any, max_connections: int, idle_timeout: float):
        self.app = app
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.refused: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        super().__init__(address, _Handler)
        threading.Thread(target=self._refuse_forever, name="refuse", daemon=True).start()

    def server_close(self) -> None:
        self.refused.put(None)
        super().server_close()

    def process_request(self, request, client_address) -> None:
        """Counted here, in the accepting thread, so the bound is exact: past it, the client
        is handed to the one refusing thread (a 503), and no thread is started for it."""
        with self.connections_lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                self.connections.add(request)
        if not full:
            try:
                super().process_request(request, client_address)  # starts its thread
            except BaseException:  # no thread (e.g. the system's limit): not counted
                with self.connections_lock:
                    self.connections.discard(request)
                raise
        elif self.refused.qsize() < self.max_connections:
            self.refused.put(request)
        else:  # a flood: drop it without a word
            self.shutdown_request(request)

    def _refuse_forever(self) -> None:
        """Answers each refused connection with a 503 and closes it gracefully: reading what
        the client sent before closing, so its reply is not lost to a reset."""
        body = json.dumps(
            error_body(503, f"the server has {self.max_connections} open connections; retry")
        ).encode()
        while (request := self.refused.get()) is not None:
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY % (len(body), body))
                request.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + 1.0
                while request.recv(65536) and time.monotonic() < deadline:
                    pass
            request.close()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def open_connections(self) -> int:
        with self.connections_lock:
            return len(self.connections)

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6
