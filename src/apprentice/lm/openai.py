"""OpenAILM: any OpenAI-compatible endpoint (OpenAI, vLLM, our own server, ...).

Sync calls go over one keep-alive ``http.client`` connection per thread
(``apprentice.lm.keepalive``: several times cheaper per call than httpx, see there); when
a proxy from the environment applies to the endpoint they go through httpx instead,
which honours it. Async calls use one ``httpx.AsyncClient`` per event loop. Retries:
exponential backoff with full jitter on 408/409/429/5xx, timeouts, connection errors
and malformed replies, honouring ``Retry-After``. Other 4xx fail at once with the
server's message. The retry loop is a plain loop rather than tenacity: a call that
succeeds at once (nearly all of them) pays nothing for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from apprentice.lm.base import (
    BaseLM,
    LMError,
    LMRequestError,
    LMUnavailableError,
    Request,
    Response,
    Usage,
)
from apprentice.lm.cache import Cache, cache_config
from apprentice.lm.usage import Price

__all__ = ["OpenAILM"]

_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _encode(body: dict[str, Any]) -> bytes:
    # Byte for byte what httpx's ``json=`` sends, whichever transport carries it.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _Budget:
    """What one call may spend: ``total_timeout_s`` over all its attempts (counted from
    the first one's start, not from waiting for a free slot) and ``max_reply_bytes`` per
    reply. The one place these limits are checked, for every transport."""

    __slots__ = ("url", "max_bytes", "total", "deadline", "received")

    def __init__(self, url: str, max_bytes: int, total: float) -> None:
        self.url, self.max_bytes, self.total = url, max_bytes, total
        self.deadline: float | None = None
        self.received = 0

    def begin_attempt(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.total
        self.received = 0

    def seconds_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(self.passed())
        return left

    def passed(self) -> str:
        return f"the total_timeout_s={self.total}s deadline passed"

    def allows_wait(self, seconds: float) -> bool:
        return time.monotonic() + seconds < self.deadline

    def check_length(self, content_length: str | None) -> None:
        if content_length and content_length.isdigit() and int(content_length) > self.max_bytes:
            raise self._too_large(f"Content-Length {content_length}")

    def add(self, received: int) -> None:
        self.received += received
        if self.received > self.max_bytes:
            raise self._too_large(f"over {self.received} bytes received")
        self.seconds_left()

    def _too_large(self, seen: str) -> LMError:
        # Not retried: the same request would most likely bring the same reply.
        return LMError(
            f"the reply from {self.url} is larger than max_reply_bytes={self.max_bytes} "
            f"({self.max_bytes / 2**20:.1f} MiB; {seen}); if such replies are expected, "
            "raise the cap with OpenAILM(..., max_reply_bytes=...)"
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _close_with_loop(client):
    """Waits, suspended, for the end of the loop it was started in: the loop's
    ``shutdown_asyncgens()`` (which ``asyncio.run`` calls) closes it, and the client with
    it, so no connection outlives its loop."""
    try:
        yield
    finally:
        await client.aclose()


def _server_message(content: bytes) -> str:
    """The error message in an OpenAI-style error body, else the body's text."""
    text = content.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return message
    except (ValueError, AttributeError):
        pass
    return text.strip()[:2000] or "(empty body)"


def _read_completion(
    content: bytes, model_type: str, n: int
) -> tuple[list[str], Usage, str | None, list[str | None]]:
    """(texts, usage, model, finish reasons) of a 200 reply, the first ``n`` choices by
    index. Raises ValueError naming what is wrong with the reply's shape: the one check
    of a reply, for the sync and async calls alike."""
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError(f"the body must be a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ValueError(f"choices must be a list, got {type(choices).__name__}")
    if len(choices) < n:
        raise ValueError(f"{len(choices)} choice(s) for n={n}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ValueError(f"choice {i} must be an object, got {type(choice).__name__}")
        if type(choice.get("index", 0)) is not int:
            raise ValueError(f"choice {i}: index must be an integer, got {choice['index']!r}")
    choices = sorted(choices, key=lambda c: c.get("index", 0))[:n]
    texts, finish_reasons = [], []
    for i, choice in enumerate(choices):
        if model_type == "chat":
            message = choice.get("message") or {}
            if not isinstance(message, dict):
                raise ValueError(f"choice {i}: message must be an object, got {message!r:.80}")
            texts.append(_text(message.get("content"), f"choice {i}: content"))
        else:
            texts.append(_text(choice.get("text"), f"choice {i}: text"))
        reason = choice.get("finish_reason")
        finish_reasons.append(reason if isinstance(reason, str) else None)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise ValueError(f"usage must be an object or null, got {type(usage).__name__}")
    tokens = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
    model = data.get("model")
    return texts, tokens, model if isinstance(model, str) else None, finish_reasons


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""  # a reply that is only tool calls, or an empty generation
    if not isinstance(value, str):
        raise ValueError(
            f"{what} must be a string or null, got {type(value).__name__} {value!r:.80}"
        )
    return value


def resolve_base_url(base_url: str | None) -> str:
    """The endpoint a ``base_url`` of None means: ``$OPENAI_BASE_URL``, else OpenAI's."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip(
        "/"
    )


def _check_options(
    *,
    base_url: str,
    model_type: str,
    concurrency: int,
    timeout: float,
    max_retries: int,
    retry_backoff: float,
    retry_max_wait: float,
    max_reply_bytes: int,
    total_timeout_s: float,
) -> None:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url must start with http:// or https://, got {base_url!r} "
            "(e.g. 'http://127.0.0.1:8000/v1')"
        )
    if model_type not in ("chat", "text"):
        raise ValueError(f"model_type must be 'chat' or 'text', got {model_type!r}")
    if type(concurrency) is not int or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if type(max_retries) is not int or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    for name, value in (
        ("timeout", timeout),
        ("retry_backoff", retry_backoff),
        ("retry_max_wait", retry_max_wait),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if timeout == 0:
        raise ValueError("timeout must be > 0 seconds, got 0")
    if type(max_reply_bytes) is not int or max_reply_bytes < 1:
        raise ValueError(f"max_reply_bytes must be an integer >= 1, got {max_reply_bytes!r}")
    if (
        isinstance(total_timeout_s, bool)
        or not isinstance(total_timeout_s, (int, float))
        or not 0 < total_timeout_s < float("inf")
    ):
        raise ValueError(
            f"total_timeout_s must be > 0 seconds (the limit on a call, retries included), "
            f"got {total_timeout_s!r}"
        )


class OpenAILM(BaseLM):
    """``OpenAILM("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1", api_key="...")``.

    ``adapter``: the name a LoRA adapter is served under (vLLM serves it as a model
    name); requests then ask for the adapter while the identity keeps the base model.
    ``model_type="text"`` uses the completions endpoint with the flattened prompt.
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        model_type: str = "chat",
        adapter: str | None = None,
        adapter_hash: str | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = 1024,
        concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 6,
        retry_backoff: float = 1.0,
        retry_max_wait: float = 60.0,
        max_reply_bytes: int = 16 * 2**20,
        total_timeout_s: float = 600.0,
        extra_body: dict[str, Any] | None = None,
        cache: bool | str | Cache | None = True,
        price: Price | None = None,
        history_size: int = 200,
    ) -> None:
        base_url = resolve_base_url(base_url)
        _check_options(
            base_url=base_url,
            model_type=model_type,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_max_wait=retry_max_wait,
            max_reply_bytes=max_reply_bytes,
            total_timeout_s=total_timeout_s,
        )
        super().__init__(
            model,
            adapter=adapter,
            adapter_hash=adapter_hash,
            cache=cache,
            price=price,
            history_size=history_size,
        )
        self.base_url = base_url
        self.api_key_env = api_key_env
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.model_type = model_type
        self.defaults = {"temperature": temperature, "max_tokens": max_tokens}
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_max_wait = retry_max_wait
        self.max_reply_bytes = max_reply_bytes
        self.total_timeout_s = total_timeout_s
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self._client = None  # httpx.Client, for the sync calls when a proxy applies
        self._connections = None  # KeepAliveConnections, for the other sync calls
        self._transport: str | None = None  # chosen on the first sync call
        self._gate = threading.BoundedSemaphore(concurrency)
        self._pool: ThreadPoolExecutor | None = None
        # Per event loop: (AsyncClient, Semaphore, closer); they belong to the loop they
        # were made in.
        self._async: dict[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore, Any]] = {}
        endpoint = "/chat/completions" if model_type == "chat" else "/completions"
        self._url = self.base_url + endpoint
        self._path = urlsplit(self.base_url).path + endpoint  # what http.client asks for

    # -- config ------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "model_type": self.model_type,
            "adapter": self.adapter,
            "adapter_hash": self.adapter_hash,
            "temperature": self.defaults["temperature"],
            "max_tokens": self.defaults["max_tokens"],
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_backoff": self.retry_backoff,
            "retry_max_wait": self.retry_max_wait,
            "max_reply_bytes": self.max_reply_bytes,
            "total_timeout_s": self.total_timeout_s,
            "extra_body": dict(self.extra_body),
            "cache": cache_config(self.cache),
            "price": self.usage.price.to_config() if self.usage.price else None,
            "history_size": self.history.maxlen,
        }

    def trace_identity(self) -> dict[str, Any]:
        # Another endpoint may serve another model under the same name.
        return {**super().trace_identity(), "base_url": self.base_url}

    def key_fields(self, request: Request) -> dict[str, Any]:
        # The request as sent: this LM's defaults filled in, the endpoint kind and any
        # extra body options (a chat and a text completion of the same messages differ).
        fields = request.key_fields()
        if fields["temperature"] is None:
            fields["temperature"] = self.defaults["temperature"]
        if fields["max_tokens"] is None:
            fields["max_tokens"] = self.defaults["max_tokens"]
        fields["model_type"] = self.model_type
        if self.extra_body:
            fields["extra_body"] = self.extra_body
        return fields

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _limits(self):
        import httpx

        return httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )

    @property
    def client(self):
        if self._client is None:
            import httpx

            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(
                        headers=self._headers(), timeout=self.timeout, limits=self._limits()
                    )
        return self._client

    @property
    def transport(self) -> str:
        """What carries sync calls: ``"http.client"`` (one keep-alive connection per
        thread), or ``"httpx"`` when a proxy from the environment (``HTTP(S)_PROXY``,
        ``ALL_PROXY``, not bypassed by ``NO_PROXY``) applies to ``base_url``: httpx
        honours it. Chosen once, on first use."""
        # http.client, not httpx, wherever it can: 0.19 vs 0.58 ms a round trip, and 92%
        # vs 69% of the ideal throughput with 64 threads (see apprentice/lm/keepalive.py).
        if self._transport is None:
            from apprentice.lm.keepalive import KeepAliveConnections, proxy_for

            with self._lock:
                if self._transport is None:
                    if proxy_for(self._url) is None:
                        headers = {**self._headers(), "Accept": "application/json"}
                        headers["User-Agent"] = "apprentice"
                        self._connections = KeepAliveConnections(
                            self.base_url, headers, self.timeout
                        )
                        self._transport = "http.client"
                    else:
                        self._transport = "httpx"
        return self._transport

    def close(self) -> None:
        """Closes the sync connections and threads (async clients go with their loops).
        The LM stays usable: a later call opens new connections."""
        with self._lock:
            if self._connections is not None:
                self._connections.close()
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
            self._async.clear()

    # -- request body and reply ----------------------------------------------------------
    def body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.adapter or self.model}
        if self.model_type == "chat":
            body["messages"] = list(request.messages)
        else:
            from apprentice.formats import messages_to_prompt

            body["prompt"] = messages_to_prompt(request.messages)
        temperature = (
            request.temperature if request.temperature is not None else self.defaults["temperature"]
        )
        max_tokens = (
            request.max_tokens if request.max_tokens is not None else self.defaults["max_tokens"]
        )
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if request.n != 1:
            body["n"] = request.n
        for name in ("top_p", "seed"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if request.stop:
            body["stop"] = list(request.stop)
        body.update(self.extra_body)
        return body

    def _reply(self, status: int, headers, content: bytes, latency: float, n: int) -> Response:
        if status != 200:
            text = _server_message(content)
            if status in _RETRY_STATUSES:
                raise _Retryable(
                    f"HTTP {status}: {text[:300]}", status, _retry_after(headers.get("retry-after"))
                )
            raise LMRequestError(
                f"{self._url} refused the request for model {self.adapter or self.model!r} "
                f"with HTTP {status}: {text[:500]}",
                status=status,
                body=content.decode("utf-8", "replace")[:2000],
            )
        try:
            texts, usage, model, finish_reasons = _read_completion(content, self.model_type, n)
        except ValueError as exc:  # json's errors included
            raise _Retryable(
                f"malformed reply from {self._url}: {exc}; the body began {content[:200]!r}"
            ) from None
        return Response(
            texts=texts,
            usage=usage,
            model=model or self.model,
            finish_reasons=finish_reasons,
            latency_s=latency,
        )

    # -- retries -----------------------------------------------------------------------
    def _delay(self, exc: _Retryable, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if exc.retry_after is not None:
            return min(exc.retry_after, self.retry_max_wait)
        ceiling = min(self.retry_max_wait, self.retry_backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # full jitter: clients that failed together spread out

    def _unavailable(self, exc: _Retryable, attempts: int, why: str = "") -> LMUnavailableError:
        return LMUnavailableError(
            f"{self._url} (model {self.adapter or self.model!r}) failed after {attempts} "
            f"attempt(s){why}: {exc}",
            status=exc.status,
            attempts=attempts,
        )

    def _wait_before_retry(self, exc: _Retryable, attempt: int, budget: _Budget) -> float:
        """Seconds to wait before attempt ``attempt + 1``; raises LMUnavailableError when
        there is none: retries used up, or the wait would outlast the total deadline."""
        if attempt > self.max_retries:
            raise self._unavailable(exc, attempt)
        delay = self._delay(exc, attempt)
        if not budget.allows_wait(delay):
            raise self._unavailable(exc, attempt, f" before {budget.passed()}")
        return delay

    def _budget(self) -> _Budget:
        return _Budget(self._url, self.max_reply_bytes, self.total_timeout_s)

    def _timed_out(self, exc: BaseException, budget: _Budget) -> _Retryable:
        if time.monotonic() >= budget.deadline:
            return _Retryable(f"timed out: {budget.passed()}")
        return _Retryable(f"timed out after {self.timeout}s ({type(exc).__name__})")

    def _httpx_timeout(self, budget: _Budget) -> float:
        # httpx's timeouts are per read: the deadline is also checked between chunks.
        return min(self.timeout, budget.seconds_left())

    # -- sync -----------------------------------------------------------------------------
    def _post(self, data: bytes, n: int, budget: _Budget) -> Response:
        if (self._transport or self.transport) == "httpx":
            return self._post_httpx(data, n, budget)
        import http.client

        with self._gate:
            budget.begin_attempt()
            start = time.perf_counter()
            try:
                status, headers, content = self._connections.post(self._path, data, budget)
            except TimeoutError as exc:
                raise self._timed_out(exc, budget) from None
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(f"connection error: {exc!r}") from None
            return self._reply(status, headers, content, time.perf_counter() - start, n)

    def _post_httpx(self, data: bytes, n: int, budget: _Budget) -> Response:
        import httpx

        with self._gate:
            budget.begin_attempt()
            start = time.perf_counter()
            try:
                timeout = self._httpx_timeout(budget)
                with self.client.stream("POST", self._url, content=data, timeout=timeout) as reply:
                    budget.check_length(reply.headers.get("content-length"))
                    chunks = []
                    for chunk in reply.iter_bytes():
                        budget.add(len(chunk))
                        chunks.append(chunk)
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise self._timed_out(exc, budget) from None
            except httpx.TransportError as exc:
                raise _Retryable(f"connection error: {exc!r}") from None
            content = b"".join(chunks)
            return self._reply(
                reply.status_code, reply.headers, content, time.perf_counter() - start, n
            )

    def _call(self, request: Request) -> Response | BaseException:
        attempt = 1
        try:
            data = _encode(self.body(request))
            budget = self._budget()
            while True:
                try:
                    return self._post(data, request.n, budget)
                except _Retryable as exc:
                    time.sleep(self._wait_before_retry(exc, attempt, budget))
                    attempt += 1
        except Exception as exc:  # returned, not raised: one failure must not sink a batch
            return exc

    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        if len(requests) == 1:
            return [self._call(requests[0])]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.concurrency, thread_name_prefix="openai-lm"
                    )
        ctx = contextvars.copy_context()
        futures = [self._pool.submit(ctx.copy().run, self._call, r) for r in requests]
        return [f.result() for f in futures]

    # -- async ----------------------------------------------------------------------------
    async def _async_state(self):
        loop = asyncio.get_running_loop()
        state = self._async.get(loop)
        if state is None:
            import httpx

            with self._lock:
                # A closed loop (an ``asyncio.run`` that returned) never runs again: forget
                # it, so repeated asyncio.run calls do not pile up loops and clients.
                for old in [old for old in self._async if old.is_closed()]:
                    del self._async[old]
                client = httpx.AsyncClient(
                    headers=self._headers(), timeout=self.timeout, limits=self._limits()
                )
                closer = _close_with_loop(client)
                state = (client, asyncio.Semaphore(self.concurrency), closer)
                self._async[loop] = state
            await closer.__anext__()
        return state

    async def _apost(self, data: bytes, n: int, budget: _Budget) -> Response:
        import httpx

        client, gate, _ = self._async.get(asyncio.get_running_loop()) or await self._async_state()
        async with gate:
            budget.begin_attempt()
            start = time.perf_counter()
            try:
                # The whole attempt, headers included, ends at the deadline.
                status, headers, content = await asyncio.wait_for(
                    self._aread(client, data, budget), budget.seconds_left()
                )
            except (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError) as exc:
                raise self._timed_out(exc, budget) from None
            except httpx.TransportError as exc:
                raise _Retryable(f"connection error: {exc!r}") from None
            return self._reply(status, headers, content, time.perf_counter() - start, n)

    async def _aread(self, client, data: bytes, budget: _Budget):
        timeout = self._httpx_timeout(budget)
        async with client.stream("POST", self._url, content=data, timeout=timeout) as reply:
            budget.check_length(reply.headers.get("content-length"))
            chunks = []
            async for chunk in reply.aiter_bytes():
                budget.add(len(chunk))
                chunks.append(chunk)
        return reply.status_code, reply.headers, b"".join(chunks)

    async def _acall(self, request: Request) -> Response | BaseException:
        attempt = 1
        try:
            data = _encode(self.body(request))
            budget = self._budget()
            while True:
                try:
                    return await self._apost(data, request.n, budget)
                except _Retryable as exc:
                    await asyncio.sleep(self._wait_before_retry(exc, attempt, budget))
                    attempt += 1
        except Exception as exc:  # returned, not raised: one failure must not sink a batch
            return exc

    async def _agenerate(self, requests: list[Request]) -> list[Response | BaseException]:
        return list(await asyncio.gather(*(self._acall(r) for r in requests)))
