"""The lobby: where a connection waits, with no thread of its own, until its request head has
arrived whole. One thread watches every waiting socket (``selectors``, so thousands cost
file descriptors and a few bytes each, not threads); a complete head is handed to
``dispatch``, which gives it a thread. A client that trickles its head holds no thread and
no slot of the server's, and is closed when its head is not whole ``head_timeout`` seconds
after it began, or ``idle_timeout`` after its last request (keep-alive).

Bounds: at most ``max_waiting`` connections wait (past it the one that has waited longest
is closed), and at most ``max_per_client`` from one address (past it that address's
oldest is closed), so a flood from one address pushes out its own connections first.

Refusing costs the lobby nothing: the reply goes out without blocking, the socket's
sending side is shut, and what the client still sends is read and dropped (so the reply
is not lost to a reset) for at most ``LINGER_S`` seconds, all in this one thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from apprentice.serve.protocol import error_body

__all__ = ["HEAD_TIMEOUT_S", "LINGER_S", "MAX_HEAD_BYTES", "Lobby", "refusal"]

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0  # a request head (request line + headers) must arrive whole this fast
MAX_HEAD_BYTES = 64 << 10
LINGER_S = 2.0  # how long a refused client's further bytes are read and dropped
MAX_LINGERING = 1024  # refused sockets lingering at once; more are closed at once
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TICK_S = 0.1


@dataclass(eq=False)
class _Waiting:
    sock: socket.socket
    address: tuple
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class Lobby:
    def __init__(
        self,
        dispatch: Callable[[socket.socket, tuple, bytes], None],
        *,
        idle_timeout: float,
        head_timeout: float = HEAD_TIMEOUT_S,
        max_waiting: int,
        max_per_client: int,
    ) -> None:
        self.dispatch = dispatch  # called in the lobby's thread, with a blocking socket
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.max_waiting = max_waiting
        self.max_per_client = max_per_client
        self.evicted = 0  # connections closed to make room (a flood's measure)
        self._waiting: dict[socket.socket, _Waiting] = {}  # oldest first
        self._per_client: Counter[str] = Counter()
        self._lingering: dict[socket.socket, float] = {}  # socket -> when to close it
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lobby", daemon=True)
        self._thread.start()

    # -- from any thread --------------------------------------------------------------------
    def admit(self, sock: socket.socket, address: tuple, data: bytes = b"", *, new: bool) -> None:
        """Waits for the next request on ``sock`` (``data``: bytes of it already read)."""
        self._post(("admit", sock, address, bytes(data), new))

    def refuse(self, sock: socket.socket, reply: bytes = b"") -> None:
        """Sends ``reply`` (if any) and closes ``sock`` gracefully, from the lobby's thread."""
        self._post(("refuse", sock, reply))

    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        self._closed = True
        self._post(None)
        self._thread.join(5)

    def _post(self, item) -> None:
        self._incoming.put(item)
        with contextlib.suppress(OSError):  # full: it is awake anyway
            self._wake_write.send(b"x")

    # -- the lobby's thread -------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic()
        try:
            while not self._closed:
                for key, _ in self._selector.select(_TICK_S):
                    if key.fileobj is self._wake_read:
                        self._take_incoming()
                    elif key.fileobj in self._lingering:
                        self._discard(key.fileobj)
                    elif (waiting := self._waiting.get(key.fileobj)) is not None:
                        self._read(waiting)
                if (now := time.monotonic()) >= next_tick:
                    self._expire(now)
                    next_tick = now + _TICK_S
        except BaseException:
            log.exception("the lobby stopped: no new request will be answered")
            raise
        finally:
            for sock in [*self._waiting, *self._lingering, self._wake_read, self._wake_write]:
                sock.close()
            self._selector.close()

    def _take_incoming(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return
            if item is None:
                return
            if item[0] == "admit":
                self._add(*item[1:])
            else:
                self._linger(*item[1:])

    def _add(self, sock: socket.socket, address: tuple, data: bytes, new: bool) -> None:
        client = str(address[0]) if address else ""
        if self._per_client[client] >= self.max_per_client:
            self._evict(next(w for w in self._waiting.values() if _client(w) == client))
        if len(self._waiting) >= self.max_waiting:
            self._evict(next(iter(self._waiting.values())))
        now = time.monotonic()
        wait = min(self.idle_timeout, self.head_timeout) if new or data else self.idle_timeout
        waiting = _Waiting(sock, address, now + wait, bytearray(data))
        try:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        except (OSError, ValueError):  # already closed
            sock.close()
            return
        self._waiting[sock] = waiting
        self._per_client[client] += 1
        if data:
            self._check_head(waiting)

    def _read(self, waiting: _Waiting) -> None:
        try:
            chunk = waiting.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client left
            self._forget(waiting)
            waiting.sock.close()
            return
        if not waiting.data:  # its head began: it must end soon
            waiting.deadline = min(waiting.deadline, time.monotonic() + self.head_timeout)
        waiting.data += chunk
        self._check_head(waiting)

    def _check_head(self, waiting: _Waiting) -> None:
        if _HEAD_END.search(waiting.data) is None:
            if len(waiting.data) > MAX_HEAD_BYTES:
                self._forget(waiting)
                self._linger(
                    waiting.sock, refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
                )
            return
        self._forget(waiting)
        try:
            waiting.sock.setblocking(True)
            self.dispatch(waiting.sock, waiting.address, bytes(waiting.data))
        except Exception:  # never let one connection stop the lobby
            log.exception("cannot hand a request from %s to a thread", waiting.address)
            waiting.sock.close()

    def _expire(self, now: float) -> None:
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            self._forget(waiting)
            if waiting.data:  # a head begun and not finished in time
                log.debug(
                    "%s: request head not whole in %.0f s", waiting.address, self.head_timeout
                )
                self._linger(waiting.sock, refusal(408, "the request head did not arrive in time"))
            else:  # silent since it connected or since its last reply
                waiting.sock.close()
        for sock in [s for s, until in self._lingering.items() if until <= now]:
            self._drop_lingering(sock)

    def _evict(self, waiting: _Waiting) -> None:
        self.evicted += 1
        self._forget(waiting)
        waiting.sock.close()

    def _forget(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.sock]
        client = _client(waiting)
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.sock)

    def _linger(self, sock: socket.socket, reply: bytes) -> None:
        try:
            sock.setblocking(False)
            if reply:
                sock.send(reply)  # a few hundred bytes: the send buffer takes them
            sock.shutdown(socket.SHUT_WR)
            if len(self._lingering) >= MAX_LINGERING:
                raise OSError("too many lingering")
            self._selector.register(sock, selectors.EVENT_READ)
        except (OSError, ValueError):
            sock.close()
            return
        self._lingering[sock] = time.monotonic() + LINGER_S

    def _discard(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._drop_lingering(sock)  # the client closed its side: done

    def _drop_lingering(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()


def _client(waiting: _Waiting) -> str:
    return str(waiting.address[0]) if waiting.address else ""


def refusal(status: int, message: str, *headers: str) -> bytes:
    """A whole HTTP reply that closes the connection: an OpenAI-style error body."""
    body = json.dumps(error_body(status, message)).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        *headers,
        "Connection: close",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
