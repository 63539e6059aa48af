"""The HTTP plumbing under apprentice's servers (``server.Server``, ``vllm_gateway.Gateway``),
on the stdlib's ``http.server``: an app object whose ``admit(method, target, headers)``
refuses a request from its head alone and whose ``handle(method, target, headers, body,
client_gone)`` returns (status, payload) or raises ``HTTPError``.

A connection waits in the ``Lobby`` (one thread for all, no slot) until its request head is
whole; only then does the request get a thread, and only ``max_connections`` requests hold
one at once (the next get a 503 from the lobby at no cost). A trickling client therefore
takes nothing from the others: its head must be whole within ``HEAD_TIMEOUT_S``, and the
lobby bounds how many connections wait, in all and per client address.

Before a byte of the body is read, the app's ``admit`` checks the API key and the route,
and the Content-Length must be one plain number of at most ``MAX_BODY_BYTES``; an
``Expect: 100-continue`` is answered only then. The body must then come within
``BODY_TIMEOUT_S`` and with no silence of ``idle_timeout``, else a 408. A reply always goes
out (JSON as ASCII, text with escapes; a 500 says only the exception's type, the log has
the rest). A payload may be a ``Relay``: another server's reply passed through as it
arrives. Between requests a kept-alive connection goes back to the lobby.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import HTTPServer as _StdlibHTTPServer
from typing import Any

from apprentice.serve.lobby import HEAD_TIMEOUT_S, Lobby, refusal
from apprentice.serve.protocol import ClientGone, HTTPError, error_body

__all__ = [
    "BODY_TIMEOUT_S",
    "HEAD_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_WAITING",
    "MAX_WAITING_PER_CLIENT",
    "HTTPServer",
    "HTTPServer6",
    "Relay",
    "client_gone",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20
MAX_CONNECTIONS = 512  # requests in progress (one thread each); more get a 503 at once
MAX_WAITING = 4096  # connections waiting for a request head (no thread); past it, the oldest go
MAX_WAITING_PER_CLIENT = 256  # of those, from one address
IDLE_TIMEOUT_S = 30.0  # a connection silent this long (between or inside requests) is closed
BODY_TIMEOUT_S = 60.0  # a request body must arrive whole this fast (16 MiB: 280 kB/s)
_LENGTH = re.compile(r"[0-9]{1,20}")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class _Writer(io.RawIOBase):
    """The reply's side of the socket: every write goes out whole."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head the lobby read (``data``: the head and any bytes after
    it); then says whether the connection can go back to the lobby, and with what bytes."""

    protocol_version = "HTTP/1.1"  # keep-alive: OpenAILM holds one connection per thread
    server_version = "apprentice"

    def __init__(self, sock, address, server, data: bytes) -> None:
        end = _HEAD_END.search(data).end()
        self._head_bytes, self.leftover = data[:end], data[end:]
        self._length: int | None = None  # the body's, once the head is admitted
        self._unread = True  # the body is still on the wire
        super().__init__(sock, address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.server.idle_timeout)
        self.rfile = io.BytesIO(self._head_bytes)
        self.wfile = _Writer(self.connection)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        pass  # the server decides what becomes of the socket

    def __getattr__(self, name: str):
        """``do_<METHOD>`` for every method: the app answers (404, 405) where http.server
        would send a 501 for a method it has no handler for."""
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def handle_expect_100(self) -> bool:
        """``100 Continue`` only for a request that may send its body."""
        try:
            self._admit(self.command)
        except HTTPError as exc:
            self.close_connection = True
            self._send(exc.status, error_body(exc.status, exc.message, exc.param))
            return False
        return super().handle_expect_100()

    def _dispatch(self, method: str) -> None:
        try:
            length = self._length if self._length is not None else self._admit(method)
            body = self._body(length)
            status, payload = self.server.app.handle(
                method, self.path, self.headers, body, self._client_gone
            )
        except ClientGone:
            self.close_connection = True
            return
        except HTTPError as exc:
            status, payload = exc.status, error_body(exc.status, exc.message, exc.param)
            if self._unread and self.headers.get("Content-Length", "0").strip() != "0":
                self.close_connection = True  # its body is not read: the connection cannot go on
        except Exception as exc:  # the details (paths, values) go to the log, not the client
            log.exception("%s %s failed", method, self.path)
            message = f"internal error ({type(exc).__name__}); the server's log has the details"
            status, payload = 500, error_body(500, message)
        self._send(status, payload)

    def _admit(self, method: str) -> int:
        """The body's length, once the app accepts the request from its head; HTTPError
        otherwise. Nothing of the body is read here."""
        admit = getattr(self.server.app, "admit", None)
        if admit is not None:
            admit(method, self.path, self.headers)
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
        self._length = length
        return length

    def _body(self, length: int) -> bytes:
        """The body, within ``BODY_TIMEOUT_S`` and with no silence of ``idle_timeout``; a 408
        otherwise. Bytes after it (a pipelined request) stay in ``leftover``."""
        body, self.leftover = bytearray(self.leftover[:length]), self.leftover[length:]
        deadline = time.monotonic() + BODY_TIMEOUT_S
        idle = self.server.idle_timeout
        while len(body) < length:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(idle, left))
                chunk = self.connection.recv(min(length - len(body), 1 << 20))
            except TimeoutError:
                late = time.monotonic() >= deadline
                why = (
                    f"not whole after {BODY_TIMEOUT_S:.0f} s" if late else f"silent for {idle:g} s"
                )
                log.debug(
                    "%s: request body %s (%d of %d bytes)",
                    self.address_string(),
                    why,
                    len(body),
                    length,
                )
                self.close_connection = True
                raise HTTPError(408, f"the request body was {why}: send it whole") from None
            except OSError:
                raise ClientGone from None
            if not chunk:
                raise ClientGone
            body += chunk
        self.connection.settimeout(idle)
        self._unread = False
        return bytes(body)

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
    A pipelined next request makes it readable too, but a peek then returns data. (``poll``,
    not ``select``: a server with over a thousand connections has descriptors past 1024.)"""
    try:
        poller = select.poll()
        poller.register(connection, select.POLLIN)
        if not poller.poll(0):
            return False
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset, or already closed
        return True


class HTTPServer(_StdlibHTTPServer):
    """Accepts connections into the lobby; a request whose head is whole gets a thread of
    its own while one of ``max_connections`` is free, else a 503."""

    # socketserver's default backlog is 5: a burst of clients connecting at once (a
    # program run over many threads) would see connections reset.
    request_queue_size = socket.SOMAXCONN

    def __init__(
        self,
        address,
        app: Any,
        max_connections: int,
        idle_timeout: float,
        *,
        max_waiting: int = MAX_WAITING,
        max_waiting_per_client: int = MAX_WAITING_PER_CLIENT,
    ):
        self.app = app
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[socket.socket] = set()  # the requests being answered
        self.connections_lock = threading.Lock()
        self._busy = refusal(
            503, f"the server is answering {max_connections} requests; retry", "Retry-After: 1"
        )
        super().__init__(address, _Handler)
        self.lobby = Lobby(
            self._start_request,
            idle_timeout=idle_timeout,
            max_waiting=min(max_waiting, _descriptors_left(max_connections)),
            max_per_client=max_waiting_per_client,
        )

    def server_close(self) -> None:
        self.lobby.close()
        super().server_close()

    def process_request(self, request, client_address) -> None:
        """The accepting thread only hands the connection to the lobby."""
        self.lobby.admit(request, client_address, new=True)

    def _start_request(self, sock: socket.socket, address, data: bytes) -> None:
        """In the lobby's thread: a thread for this request, or a 503 at no cost."""
        with self.connections_lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                self.connections.add(sock)
        if full:
            self.lobby.refuse(sock, self._busy)
            return
        try:
            threading.Thread(target=self._answer, args=(sock, address, data), daemon=True).start()
        except BaseException:  # no thread (e.g. the system's limit): not counted
            with self.connections_lock:
                self.connections.discard(sock)
            self.lobby.refuse(sock, self._busy)

    def _answer(self, sock: socket.socket, address, data: bytes) -> None:
        handler = None
        try:
            handler = _Handler(sock, address, self, data)
        except Exception:
            log.exception("the request from %s failed", address)
        finally:
            with self.connections_lock:
                self.connections.discard(sock)
        if handler is not None and not handler.close_connection:
            self.lobby.admit(sock, address, handler.leftover, new=False)  # keep-alive
        else:
            self.lobby.refuse(sock)  # closed gracefully: what the client still sends is dropped

    def open_connections(self) -> int:
        """Requests being answered plus connections waiting for one."""
        with self.connections_lock:
            return len(self.connections) + self.lobby.waiting()

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


def _descriptors_left(max_connections: int) -> int:
    """How many waiting connections this process's open-file limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_WAITING
    return max(16, soft - max_connections - 256)


class HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6
