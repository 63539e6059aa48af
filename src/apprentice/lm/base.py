"""The LM layer's contract: Request/Response, errors, and BaseLM (cache, usage, history).

Every backend is batch-first: ``generate(list[Request]) -> list[Response]`` with an
async twin ``agenerate``. A backend only implements ``_generate`` (and optionally
``_agenerate``); BaseLM puts the cache, usage accounting and history around it, so
every backend gets them the same way.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apprentice.lm.cache import Cache, resolve_cache
from apprentice.lm.usage import Price, Usage, UsageTracker

__all__ = [
    "BaseLM",
    "HistoryEntry",
    "LM",
    "LMError",
    "LMRequestError",
    "LMUnavailableError",
    "Message",
    "Request",
    "Response",
    "Usage",
    "format_history",
    "recent_history",
]

Message = dict[str, str]


class LMError(RuntimeError):
    """An LM call that failed."""


class LMRequestError(LMError):
    """The backend refused the request (HTTP 4xx other than 408/429): retrying will not help."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class LMUnavailableError(LMError):
    """The backend kept failing (429, 5xx, timeouts, connection errors) after every retry."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class Request:
    """One LM call. ``meta`` rides along for in-process backends and is not part of the key."""

    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    n: int = 1
    stop: tuple[str, ...] | None = None
    top_p: float | None = None
    seed: int | None = None
    # Distinguishes otherwise identical requests (re-sampling): part of the cache key.
    rollout: int = 0
    meta: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and frozen into tuples (a request is immutable);
        # a lone stop string is one stop sequence, never a list of characters.
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is not None and not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not self.messages:
            raise ValueError("a Request needs at least one message, got none")
        if type(self.n) is not int or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")

    def key_fields(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": self.n,
            "stop": self.stop,
            "top_p": self.top_p,
            "seed": self.seed,
            "rollout": self.rollout,
        }


@dataclass(frozen=True)
class Response:
    """The completions of one request (``len(texts) == request.n``)."""

    texts: list[str]
    usage: Usage = Usage()
    model: str = ""
    finish_reasons: list[str | None] = field(default_factory=list)
    latency_s: float = 0.0
    cached: bool = False

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
            "model": self.model,
            "finish_reasons": self.finish_reasons,
        }

    @classmethod
    def from_json(cls, data: Any, cached: bool = False) -> Response:
        """The inverse of ``to_json``; raises ValueError naming the first field of the
        wrong shape (a cache row may be corrupted: it must not come back as a wrong value)."""
        if not isinstance(data, dict):
            raise ValueError(f"a response must be an object, got {type(data).__name__}")
        texts = data.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a list of strings, got {_shown(texts)}")
        usage = data.get("usage", (0, 0))
        if not isinstance(usage, (list, tuple)) or len(usage) != 2:
            raise ValueError(
                f"usage must be [prompt_tokens, completion_tokens], got {_shown(usage)}"
            )
        model = data.get("model", "")
        if not isinstance(model, str):
            raise ValueError(f"model must be a string, got {_shown(model)}")
        reasons = data.get("finish_reasons", [])
        if not isinstance(reasons, list) or not all(
            r is None or isinstance(r, str) for r in reasons
        ):
            raise ValueError(
                f"finish_reasons must be a list of strings or nulls, got {_shown(reasons)}"
            )
        return cls(
            texts=texts, usage=Usage(*usage), model=model, finish_reasons=reasons, cached=cached
        )


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.80}"


def _cached_response(n: int) -> Any:
    """Reads a cache row for a request of ``n`` completions (ValueError if it cannot)."""

    def read(row: Any) -> Response:
        response = Response.from_json(row, cached=True)
        if len(response.texts) != n:
            raise ValueError(f"{len(response.texts)} text(s) for n={n}")
        return response

    return read


# Every call of every LM gets the next number, so the histories of several LMs (a
# per-predictor LM beside the configured one) merge back into the order the calls finished.
_CALL_NUMBERS = itertools.count()
# Every LM made in this process and still alive: ``ap.inspect_history()`` reads them all.
_LIVE_LMS: weakref.WeakSet[BaseLM] = weakref.WeakSet()


@dataclass(frozen=True)
class HistoryEntry:
    request: Request
    response: Response | None
    error: str | None
    timestamp: float
    number: int = field(default_factory=lambda: next(_CALL_NUMBERS))


class BaseLM:
    """Shared machinery of every backend. Subclasses implement ``_generate``."""

    backend = "base"

    def __init__(
        self,
        model: str,
        *,
        adapter: str | None = None,
        adapter_hash: str | None = None,
        cache: bool | str | Cache | None = False,
        price: Price | None = None,
        history_size: int = 200,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an integer >= 0, got {history_size!r}")
        self.model = model
        self.adapter = adapter
        self.adapter_hash = adapter_hash
        self.cache = resolve_cache(cache)
        self.usage = UsageTracker(price)
        self.history: collections.deque[HistoryEntry] = collections.deque(maxlen=history_size)
        _LIVE_LMS.add(self)

    # -- identity -------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        """Who answers: part of every cache key, and recorded in traces."""
        return {
            "backend": self.backend,
            "model": self.model,
            "adapter": self.adapter,
            "adapter_hash": self.adapter_hash,
        }

    def trace_identity(self) -> dict[str, Any]:
        """What decides this LM's answers beyond each request's own fields: its identity and
        the defaults it fills into every request. A trace store made with one value is not
        resumed with another."""
        fields = self.key_fields(Request(messages=({"role": "user", "content": ""},)))
        for name in Request.__dataclass_fields__:  # the request's own, not the LM's
            if name not in ("temperature", "max_tokens"):
                fields.pop(name, None)
        return {**self.identity, "defaults": fields}

    def cache_key(self, request: Request) -> str:
        payload = json.dumps(
            [self.identity, self.key_fields(request)], sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def key_fields(self, request: Request) -> dict[str, Any]:
        """What the backend is asked: a backend adds the defaults it fills in and any
        option that changes the answer, so two LMs that send different requests never
        share a cache entry."""
        return request.key_fields()

    def to_config(self) -> dict[str, Any]:
        """A JSON-safe description from which ``lm_from_config`` rebuilds this LM (no secrets)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved in a program")

    def __deepcopy__(self, memo: dict) -> BaseLM:
        # An LM is a shared resource (connection pool, cache, counters): copies of a
        # program share it rather than duplicating it.
        return self

    def __repr__(self) -> str:
        adapter = f", adapter={self.adapter!r}" if self.adapter else ""
        return f"{type(self).__name__}({self.model!r}{adapter})"

    # -- the batch-first API ------------------------------------------------------
    def generate(
        self, requests: Sequence[Request], *, return_exceptions: bool = False
    ) -> list[Any]:
        """Answers every request. Raises the first failure unless ``return_exceptions``."""
        _check_batch(requests)
        results, todo, keys = self._lookup(requests)
        if todo:
            fresh = self._generate([requests[i] for i in todo])
            self._store(requests, results, todo, keys, fresh)
        return self._finish(results, return_exceptions)

    async def agenerate(
        self, requests: Sequence[Request], *, return_exceptions: bool = False
    ) -> list[Any]:
        _check_batch(requests)
        results, todo, keys = self._lookup(requests)
        if todo:
            fresh = await self._agenerate([requests[i] for i in todo])
            self._store(requests, results, todo, keys, fresh)
        return self._finish(results, return_exceptions)

    def __call__(self, prompt: str | list[Message], **sampling: Any) -> list[str]:
        """Convenience for a quick look: ``lm("Say hi")`` returns the completions' texts."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        request = Request(messages=tuple(messages), **sampling)
        return self.generate([request])[0].texts

    # -- what a backend implements ------------------------------------------------
    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        """One result per request, in order; a failure is returned, not raised."""
        raise NotImplementedError

    async def _agenerate(self, requests: list[Request]) -> list[Response | BaseException]:
        import contextvars

        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            None, ctx.run, self._generate, requests
        )

    # -- cache, usage, history -------------------------------------------------------
    def _lookup(self, requests: Sequence[Request]):
        results: list[Any] = [None] * len(requests)
        if self.cache is None or not self.cache.enabled:
            return results, list(range(len(requests))), None
        keys = [self.cache_key(r) for r in requests]
        todo = []
        for i, key in enumerate(keys):
            response = self.cache.get(key, _cached_response(requests[i].n))
            if response is None:
                todo.append(i)
            else:
                results[i] = response
                self.usage.record(response.usage, cached=True)
                self.history.append(HistoryEntry(requests[i], response, None, time.time()))
        return results, todo, keys

    def _store(self, requests, results, todo, keys, fresh) -> None:
        if len(fresh) != len(todo):
            raise LMError(
                f"{type(self).__name__} returned {len(fresh)} results for {len(todo)} requests"
            )
        now = time.time()
        for i, outcome in zip(todo, fresh, strict=False):
            results[i] = outcome
            if isinstance(outcome, BaseException):
                self.history.append(HistoryEntry(requests[i], None, repr(outcome), now))
                continue
            self.usage.record(outcome.usage, cached=False)
            self.history.append(HistoryEntry(requests[i], outcome, None, now))
            if keys is not None:
                self.cache.put(keys[i], outcome.to_json())

    @staticmethod
    def _finish(results: list[Any], return_exceptions: bool) -> list[Any]:
        if not return_exceptions:
            for outcome in results:
                if isinstance(outcome, BaseException):
                    raise outcome
        return results

    def inspect_history(self, n: int = 1, *, file: Any = None) -> str:
        """Prints (and returns) this LM's last ``n`` calls: the messages sent and what came
        back. ``ap.inspect_history(n)`` shows the last calls of every LM."""
        return format_history([(self, e) for e in list(self.history)[-n:]], file=file)


def recent_history(n: int) -> list[tuple[BaseLM, HistoryEntry]]:
    """The last ``n`` calls over every live LM, oldest first."""
    entries = [(lm, e) for lm in list(_LIVE_LMS) for e in list(lm.history)]
    entries.sort(key=lambda pair: pair[1].number)
    return entries[-n:] if n > 0 else []


def format_history(entries: Sequence[tuple[BaseLM, HistoryEntry]], *, file: Any = None) -> str:
    """Prints (and returns) calls as the model saw them, each headed by the LM that answered."""
    lines: list[str] = []
    for lm, entry in entries:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        lines.append(f"===== {stamp} {lm!r} =====")
        for message in entry.request.messages:
            lines.append(f"--- {message['role']} ---")
            lines.append(message["content"])
        if entry.response is not None:
            cached = " (cached)" if entry.response.cached else ""
            for i, text in enumerate(entry.response.texts):
                lines.append(f"--- completion {i}{cached} ---")
                lines.append(text)
        else:
            lines.append(f"--- error ---\n{entry.error}")
    text = "\n".join(lines)
    print(text, file=file)
    return text


def _check_batch(requests: Any) -> None:
    if isinstance(requests, Request) or not isinstance(requests, Sequence):
        raise TypeError(
            f"generate takes a list of Request, got {type(requests).__name__}: {requests!r:.200}"
        )
    for request in requests:
        if not isinstance(request, Request):
            raise TypeError(
                f"generate takes a list of Request, got an item of type "
                f"{type(request).__name__}: {request!r:.200}"
            )


# The structural type a predictor accepts: anything with BaseLM's public methods.
LM = BaseLM
