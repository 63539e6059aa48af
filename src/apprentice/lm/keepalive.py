"""One keep-alive ``http.client`` connection per thread: OpenAILM's sync transport.

Why the standard library and not httpx (measured on loopback, docs/benchmarks.md): a
bare httpx round trip costs 0.58 ms against 0.19 ms for ``http.client``; over httpx our
``Predict`` took 0.70 ms a call (3.0x faster than DSPy's, the bar is 5x), over this
0.31 ms (7.1x). With 64 threads against a 100 ms server, ``bootstrap_traces`` over one
shared httpx pool reached 69% of the ideal throughput, over this 92% (the bar is 90%).
A thread never shares its connection: no pool to lock, no connection to wait for.

Connections live in a ``threading.local``: when a thread ends (or the owner is dropped),
its slot is freed and a finalizer closes the socket; ``close()`` closes every one.
"""

from __future__ import annotations

import functools
import http.client
import io
import os
import threading
import weakref
from collections.abc import Callable
from email.message import Message
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["Budget", "KeepAliveConnections", "proxy_for"]

_ssl_context = None  # one for every HTTPS connection: loading the CA store costs milliseconds
_ssl_lock = threading.Lock()


def _shared_ssl_context():
    global _ssl_context
    if _ssl_context is None:
        import ssl

        with _ssl_lock:
            if _ssl_context is None:
                _ssl_context = ssl.create_default_context()
    return _ssl_context


def proxy_for(url: str) -> str | None:
    """The proxy the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``; on macOS
    and Windows also the system settings) names for ``url``, or None."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


class Budget(Protocol):
    """What one request may still spend (OpenAILM's ``_Budget``)."""

    def seconds_left(self) -> float: ...  # raises TimeoutError once none are left

    def check_length(self, content_length: str | None) -> None: ...

    def add(self, received: int) -> None: ...


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read waiting at most ``min(timeout, seconds_left())``: a
    server that sends a byte a second never trips a per-read timeout, but runs out of
    seconds_left."""

    def __init__(self, sock, file, timeout: float, seconds_left: Callable[[], float]) -> None:
        self._sock = sock
        # The socket's own file, unread: while it is open, closing the connection (a reply
        # that ends it) leaves the socket open until this reply is read, as http.client's
        # own reader does.
        self._file = file
        self._timeout = timeout
        self._seconds_left = seconds_left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(min(self._timeout, self._seconds_left()))
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class _TimedResponse(http.client.HTTPResponse):
    """An HTTPResponse that reads its status line, headers and body through a
    ``_DeadlineReader`` instead of the socket's own file."""

    def __init__(self, sock, *args, timeout: float, seconds_left, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(sock, self.fp, timeout, seconds_left))


class _Slot:
    """What one thread holds: its connection (closed by a finalizer when the slot goes)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        weakref.finalize(self, conn.close)


class KeepAliveConnections:
    """``post(path, body)`` over this thread's own keep-alive connection to ``base_url``'s
    host. Raises what ``http.client`` and ``socket`` raise: ``TimeoutError`` after
    ``timeout`` s without progress, other ``OSError`` and ``http.client.HTTPException``
    for a broken connection (the connection is closed then, so the next call starts clean)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.headers = dict(headers)
        self.timeout = timeout
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._lock = threading.Lock()
        _open.add(self)

    def _connection(self) -> http.client.HTTPConnection:
        if self.https:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=_shared_ssl_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        slot = self._local.slot = _Slot(conn)
        with self._lock:
            self._slots.add(slot)
        return conn

    def post(self, path: str, body: bytes, budget: Budget) -> tuple[int, Message, bytes]:
        """(status, headers, content). A connection the server closed while it sat idle
        (a keep-alive timeout, a restart) fails on first use: that one failure is retried
        at once on a fresh connection; a fresh connection's failure is raised.

        Every socket read waits at most ``min(timeout, budget.seconds_left())``, and
        ``budget`` sees the headers and each chunk of the body as it arrives: a reply
        that trickles in, or grows past the size cap, is cut off."""
        slot = getattr(self._local, "slot", None)
        conn = slot.conn if slot is not None else self._connection()
        fresh = conn.sock is None
        while True:
            try:
                conn.timeout = min(self.timeout, budget.seconds_left())  # to connect and send
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                conn.response_class = functools.partial(
                    _TimedResponse, timeout=self.timeout, seconds_left=budget.seconds_left
                )
                conn.request("POST", path, body, self.headers)
                reply = conn.getresponse()
                budget.check_length(reply.headers.get("content-length"))
                chunks = []
                while chunk := reply.read1(65536):
                    budget.add(len(chunk))
                    chunks.append(chunk)
                reply.close()  # read to the end: marks the connection ready for the next request
                return reply.status, reply.headers, b"".join(chunks)
            except ConnectionError:  # reset, broken pipe, closed before the reply began
                conn.close()
                if fresh:
                    raise
                fresh = True
            except BaseException:  # a timeout, a bad reply: the connection's state is unknown
                conn.close()
                raise

    @property
    def open_connections(self) -> int:
        """Connections with a live socket, over all threads."""
        with self._lock:
            return sum(slot.conn.sock is not None for slot in self._slots)

    def close(self) -> None:
        """Closes every thread's connection; a thread that posts again opens a new one."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.conn.close()

    def _after_fork(self) -> None:
        # A forked child must not talk over its parent's sockets (two processes would
        # read each other's replies). Dropping the slots closes only the child's copies.
        self._local = threading.local()
        self._slots = weakref.WeakSet()
        self._lock = threading.Lock()


_open: weakref.WeakSet[KeepAliveConnections] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for connections in list(_open):
        connections._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
