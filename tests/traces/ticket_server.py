"""A loopback OpenAI-compatible teacher for the demo ticket task, with deterministic faults.

It answers ``/v1/chat/completions`` for ``recipes.demo.task.TicketTriage`` in the chat
format, solving the ticket by the demo's rules. A hash of the ticket text decides, per
call, whether it fails and how (``call_fault``), so a test knows in advance exactly
which example ids fail and why. Of all calls:

    7%  HTTP 500 or 503               -> LMUnavailableError naming the status
    7%  answers only after ``slow_s`` -> LMUnavailableError "timed out"
    4%  garbage completion text       -> ParseError
    2%  a 200 whose body is not JSON  -> LMUnavailableError "malformed reply"

``transient=True`` makes HTTP errors, slow replies and broken bodies happen on the first
request of a call only (a retry heals them), and garbage text at temperature 0 only (a
re-run at a higher temperature heals it); HTTP 500 stays permanent.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from recipes.demo.task import ClassifyTicket, ExtractOrder, teacher

_TICKET_RE = re.compile(r"\[\[ticket\]\]\n(.*?)\n\n(?:\[\[|Reply with)", re.S)


STEPS = ("classify", "extract")


@dataclass(frozen=True)
class Fault:
    kind: str  # "http", "slow", "garbage" or "bad_body"
    step: str  # the predictor whose call fails: "classify" or "extract"
    status: int = 200


def call_fault(ticket: str, step: str) -> Fault | None:
    """The fault planned for this call, or None (for about 80% of calls)."""
    h = int.from_bytes(hashlib.sha256(f"{step}:{ticket}".encode()).digest()[:8], "big")
    bucket = h % 100
    if bucket < 7:
        return Fault("http", step, (500, 503)[(h >> 16) % 2])
    if bucket < 14:
        return Fault("slow", step)
    if bucket < 18:
        return Fault("garbage", step)
    if bucket < 20:
        return Fault("bad_body", step)
    return None


def fault_for(ticket: str) -> Fault | None:
    """The fault that ends this ticket's example (its first failing call), or None."""
    return next((f for f in map(call_fault, [ticket] * 2, STEPS) if f is not None), None)


def right_answer(step: str, ticket: str) -> str:
    """The completion a good teacher gives, written out in the chat format by hand."""
    if step == "classify":
        out = teacher(ClassifyTicket, {"ticket": ticket})
        return f"[[reasoning]]\n{out['reasoning']}\n\n[[category]]\n{out['category']}"
    return f"[[order_id]]\n{teacher(ExtractOrder, {'ticket': ticket})['order_id']}"


# Garbage that cannot parse: no markers for a two-field reply, a missing field for a one-field one.
GARBAGE = {
    "classify": "I'm sorry, I can't help with that request.",
    "extract": "[[reasoning]]\nThe order number is somewhere in there.",
}


class TicketServer:
    def __init__(self, *, slow_s: float = 1.5, transient: bool = False) -> None:
        self.slow_s = slow_s
        self.transient = transient
        # (ticket, step, temperature) -> requests seen: a call and its retries share a key.
        self.requests: collections.Counter[tuple[str, str, float]] = collections.Counter()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.teacher = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> TicketServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes, float]:
        """(status, payload, delay) for one request body."""
        messages = body["messages"]
        step = "extract" if "`order_id`" in messages[0]["content"] else "classify"
        ticket = _TICKET_RE.search(messages[-1]["content"]).group(1)
        temperature = body.get("temperature", 0.0)
        with self._lock:
            self.requests[ticket, step, temperature] += 1
            first = self.requests[ticket, step, temperature] == 1
        fault = call_fault(ticket, step)
        if fault is None:
            return 200, completion(right_answer(step, ticket)), 0.0
        if fault.kind == "garbage":
            healed = self.transient and temperature > 0
            return 200, completion(right_answer(step, ticket) if healed else GARBAGE[step]), 0.0
        if self.transient and not first and not (fault.kind == "http" and fault.status == 500):
            return 200, completion(right_answer(step, ticket)), 0.0
        if fault.kind == "http":
            message = {"error": {"message": "the teacher is overloaded", "type": "server_error"}}
            return fault.status, json.dumps(message).encode(), 0.0
        if fault.kind == "slow":
            return 200, completion(right_answer(step, ticket)), self.slow_s
        return 200, b'{"id": "chatcmpl-1", "choices": [{"message": ', 0.0  # bad_body


def completion(text: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-ticket",
            "object": "chat.completion",
            "model": "teacher",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
        }
    ).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 32 clients connecting at once must not meet a full backlog


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload, delay = self.server.teacher.answer(body)  # type: ignore[attr-defined]
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up

    def log_message(self, format: str, *args: Any) -> None:
        pass
