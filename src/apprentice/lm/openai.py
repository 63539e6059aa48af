"""OpenAILM: any OpenAI-compatible endpoint (OpenAI, vLLM, our own server, ...).

HTTP goes through httpx (pooled keep-alive connections, sync and async); retries go
through tenacity: exponential backoff with full jitter on 408/409/429/5xx, timeouts
and connection errors, honouring ``Retry-After``. Other 4xx fail at once with the
server's message.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apprentice.lm.base import (
    BaseLM,
    LMError,
    LMRequestError,
    LMUnavailableError,
    Request,
    Response,
    Usage,
)
from apprentice.lm.cache import Cache
from apprentice.lm.usage import Price

__all__ = ["OpenAILM"]

_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
        extra_body: dict[str, Any] | None = None,
        cache: bool | str | Cache | None = True,
        price: Price | None = None,
        history_size: int = 200,
    ) -> None:
        super().__init__(
            model,
            adapter=adapter,
            adapter_hash=adapter_hash,
            cache=cache,
            price=price,
            history_size=history_size,
        )
        if model_type not in ("chat", "text"):
            raise ValueError(f"model_type must be 'chat' or 'text', got {model_type!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = (
            base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        ).rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.model_type = model_type
        self.defaults = {"temperature": temperature, "max_tokens": max_tokens}
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_max_wait = retry_max_wait
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self._client = None
        self._gate = threading.BoundedSemaphore(concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._url = self.base_url + (
            "/chat/completions" if model_type == "chat" else "/completions"
        )

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
        }

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

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

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

    def _reply(self, status: int, headers, content: bytes, latency: float) -> Response:
        if status != 200:
            text = content.decode("utf-8", "replace")[:2000]
            if status in _RETRY_STATUSES:
                raise _Retryable(
                    f"HTTP {status}: {text[:300]}", status, _retry_after(headers.get("retry-after"))
                )
            raise LMRequestError(
                f"{self._url} refused the request for model {self.adapter or self.model!r} "
                f"with HTTP {status}: {text[:500]}",
                status=status,
                body=text,
            )
        import json

        try:
            data = json.loads(content)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if self.model_type == "chat":
                texts = [(c.get("message") or {}).get("content") or "" for c in choices]
            else:
                texts = [c.get("text") or "" for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Retryable(
                f"malformed reply from {self._url}: {exc}: {content[:200]!r}"
            ) from None
        usage = data.get("usage") or {}
        return Response(
            texts=texts,
            usage=Usage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            ),
            model=data.get("model", self.model),
            finish_reasons=[c.get("finish_reason") for c in choices],
            latency_s=latency,
        )

    # -- retries -----------------------------------------------------------------------
    def _wait(self, state) -> float:
        from tenacity import wait_random_exponential

        exc = state.outcome.exception()
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(after, self.retry_max_wait)
        return wait_random_exponential(multiplier=self.retry_backoff, max=self.retry_max_wait)(
            state
        )

    def _retry_options(self) -> dict[str, Any]:
        from tenacity import retry_if_exception_type, stop_after_attempt

        return {
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": self._wait,
            "retry": retry_if_exception_type(_Retryable),
            "reraise": True,
        }

    def _unavailable(self, exc: _Retryable, attempts: int) -> LMUnavailableError:
        return LMUnavailableError(
            f"{self._url} (model {self.adapter or self.model!r}) failed after {attempts} attempt(s): {exc}",
            status=exc.status,
            attempts=attempts,
        )

    # -- sync -----------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> Response:
        import httpx

        with self._gate:
            start = time.perf_counter()
            try:
                reply = self.client.post(self._url, json=body)
            except httpx.TimeoutException as exc:
                raise _Retryable(
                    f"timed out after {self.timeout}s ({type(exc).__name__})"
                ) from None
            except httpx.TransportError as exc:
                raise _Retryable(f"connection error: {exc!r}") from None
            return self._reply(
                reply.status_code, reply.headers, reply.content, time.perf_counter() - start
            )

    def _call(self, request: Request) -> Response | BaseException:
        from tenacity import Retrying

        body = self.body(request)
        retrying = Retrying(**self._retry_options())
        try:
            return retrying(self._post, body)
        except _Retryable as exc:
            return self._unavailable(exc, retrying.statistics.get("attempt_number", 1))
        except LMError as exc:
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
    def _async_state(self):
        import httpx

        loop = asyncio.get_running_loop()
        state = self._async.get(loop)
        if state is None:
            client = httpx.AsyncClient(
                headers=self._headers(), timeout=self.timeout, limits=self._limits()
            )
            state = (client, asyncio.Semaphore(self.concurrency))
            self._async[loop] = state
        return state

    async def _apost(self, body: dict[str, Any]) -> Response:
        import httpx

        client, gate = self._async_state()
        async with gate:
            start = time.perf_counter()
            try:
                reply = await client.post(self._url, json=body)
            except httpx.TimeoutException as exc:
                raise _Retryable(
                    f"timed out after {self.timeout}s ({type(exc).__name__})"
                ) from None
            except httpx.TransportError as exc:
                raise _Retryable(f"connection error: {exc!r}") from None
            return self._reply(
                reply.status_code, reply.headers, reply.content, time.perf_counter() - start
            )

    async def _acall(self, request: Request) -> Response | BaseException:
        from tenacity import AsyncRetrying

        body = self.body(request)
        retrying = AsyncRetrying(**self._retry_options())
        try:
            return await retrying(self._apost, body)
        except _Retryable as exc:
            return self._unavailable(exc, retrying.statistics.get("attempt_number", 1))
        except LMError as exc:
            return exc

    async def _agenerate(self, requests: list[Request]) -> list[Response | BaseException]:
        return list(await asyncio.gather(*(self._acall(r) for r in requests)))
