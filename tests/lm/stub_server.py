"""A real OpenAI-compatible HTTP server on loopback, programmable per test.

It speaks just enough of ``/chat/completions`` and ``/completions`` for OpenAILM: each
POST takes the next ``Reply`` from a queue (or the default reply, or whatever the
``respond`` callback returns), records what it saw, and counts requests in flight.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server sends back for one request."""

    texts: list[str] | str = "hello"
    status: int = 200
    usage: tuple[int, int] = (10, 5)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (to make a client time out)
    raw: bytes | None = None  # a body sent as is (garbage, an error document)
    drop: bool = False  # answer, then close the connection without saying so (an idle timeout)
    hang_up: bool = False  # close the connection without answering
    trickle: float = 0.0  # seconds between the body's bytes, sent one at a time
    unsized: bool = False  # no Content-Length: the body ends when the connection closes


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    raw: bytes  # the body's bytes as sent
    client: tuple[str, int]
    at: float


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


class StubServer:
    def __init__(self) -> None:
        self.replies: collections.deque[Reply] = collections.deque()
        self.default = Reply()
        self.respond: Callable[[Seen], Reply] | None = None
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed: set[tuple[str, int]] = set()  # connections the client closed or we dropped
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.stub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def queue(self, *replies: Reply) -> StubServer:
        self.replies.extend(replies)
        return self

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [s.body for s in self.seen]

    @property
    def raw_bodies(self) -> list[bytes]:
        return [s.raw for s in self.seen]

    @property
    def connections(self) -> int:
        """Distinct TCP connections the requests came over."""
        return len({s.client for s in self.seen})

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- called by the handler threads ---------------------------------------------------
    def _enter(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.respond is None:
                return self.replies.popleft() if self.replies else self.default
        return self.respond(seen)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def completion_body(reply: Reply, seen: Seen) -> bytes:
    # A lone text answers each of the n completions asked for, as a real server would.
    texts = [reply.texts] * seen.body.get("n", 1) if isinstance(reply.texts, str) else reply.texts
    chat = seen.path.endswith("/chat/completions")
    choices = [
        {"index": i, "finish_reason": "stop"}
        | ({"message": {"role": "assistant", "content": t}} if chat else {"text": t})
        for i, t in enumerate(texts)
    ]
    prompt, completion = reply.usage
    return json.dumps(
        {
            "id": "stub",
            "object": "chat.completion" if chat else "text_completion",
            "model": seen.body.get("model", ""),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection pooling is observable
    disable_nagle_algorithm = True
    wbufsize = -1  # head and body leave in one write (flushed after each request)

    def do_POST(self) -> None:
        stub: StubServer = self.server.stub  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        seen = Seen(
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=json.loads(raw) if raw else {},
            raw=raw,
            client=self.client_address,
            at=time.monotonic(),
        )
        reply = stub._enter(seen)
        self.close_connection = reply.drop or reply.hang_up or reply.unsized
        try:
            if reply.delay:
                time.sleep(reply.delay)
            if reply.hang_up:
                return
            if reply.raw is not None:
                payload = reply.raw
            elif reply.status == 200:
                payload = completion_body(reply, seen)
            else:
                payload = error_body(f"stub says {reply.status}")
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            if not reply.unsized:
                self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if reply.trickle:
                self.wfile.flush()
                for i in range(len(payload)):
                    time.sleep(reply.trickle)
                    self.wfile.write(payload[i : i + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer
        finally:
            stub._leave()

    def finish(self) -> None:
        super().finish()
        stub: StubServer = self.server.stub  # type: ignore[attr-defined]
        with stub._lock:
            stub.closed.add(self.client_address)

    def log_message(self, format: str, *args: Any) -> None:
        pass
