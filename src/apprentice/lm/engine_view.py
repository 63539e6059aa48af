"""EngineView: what LocalLM and VLLMLM share as views of an in-process engine.

The engine (``lm.engine.Engine``) holds the base model and the adapter table; a view
answers with one adapter (or the base), and sends its requests through the engine's
queue (``_submit``). Its adapter hash is read from the engine's table, so loading other weights
under the same name changes the cache key and a swap never returns a stale answer.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from apprentice.formats.prompt import PromptTemplate
from apprentice.lm.base import BaseLM, Request, Response
from apprentice.lm.cache import cache_config

__all__ = ["EngineView", "check_batching"]


def check_batching(*, max_batch_size: Any, batch_wait_ms: Any, max_new_tokens: Any) -> None:
    for name, value in (("max_batch_size", max_batch_size), ("max_new_tokens", max_new_tokens)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if (
        isinstance(batch_wait_ms, bool)
        or not isinstance(batch_wait_ms, (int, float))
        or not batch_wait_ms >= 0
    ):
        raise ValueError(
            f"batch_wait_ms must be a number of milliseconds >= 0, got {batch_wait_ms!r}"
        )


class EngineView(BaseLM):
    """Subclasses set ``self.engine`` before ``BaseLM.__init__`` and define ``_dtype_key``."""

    engine: Any
    max_batch_size: int
    batch_wait_ms: float
    max_new_tokens: int
    template: PromptTemplate | None = None  # the chat template the student was trained with

    def _check_loaded(self, adapter: str | None, base_model: Any) -> None:
        if adapter is not None and adapter not in self.engine.adapter_names():
            raise ValueError(
                f"adapter {adapter!r} is not loaded for {str(base_model)!r}; loaded: "
                f"{self.engine.adapter_names()}; pass adapters={{{adapter!r}: path}}"
            )

    @property
    def adapter_hash(self) -> str | None:
        return self.engine.adapter_hash(self.adapter) if self.adapter else None

    @adapter_hash.setter
    def adapter_hash(self, value: str | None) -> None:
        if value is not None:
            raise AttributeError(
                f"{type(self).__name__}.adapter_hash is the loaded adapter's content hash; "
                "it cannot be set"
            )

    @property
    def stats(self):
        return self.engine.stats

    def load_adapter(self, name: str, path, *, replace: bool = False) -> str:
        return self.engine.load_adapter(name, path, replace=replace)

    def unload_adapter(self, name: str) -> None:
        self.engine.unload_adapter(name)

    def adapter_names(self) -> list[str]:
        return self.engine.adapter_names()

    def _view_options(self) -> dict[str, Any]:
        """The options every view shares: ``with_adapter`` passes them on."""
        return {
            "max_batch_size": self.max_batch_size,
            "batch_wait_ms": self.batch_wait_ms,
            "max_new_tokens": self.max_new_tokens,
            "cache": self.cache if self.cache is not None else False,
            "price": self.usage.price,
            "history_size": self.history.maxlen or 0,
            "template": self.template,
        }

    def _base_config(self) -> dict[str, Any]:
        path = self.engine.adapter_path(self.adapter) if self.adapter else None
        return {
            "backend": self.backend,
            "model": self.model,
            "adapter": self.adapter,
            "adapters": {self.adapter: path} if path else {},
            "max_batch_size": self.max_batch_size,
            "batch_wait_ms": self.batch_wait_ms,
            "max_new_tokens": self.max_new_tokens,
            "cache": cache_config(self.cache),
            "price": self.usage.price.to_config() if self.usage.price else None,
            "history_size": self.history.maxlen,
            "template": self.template.to_config() if self.template else None,
        }

    def _dtype_key(self) -> str:
        raise NotImplementedError

    @property
    def identity(self) -> dict[str, Any]:
        """Who answers, and in which dtype: bf16 and fp32 answers differ, and the report
        names the one that served."""
        return {**super().identity, "dtype": self._dtype_key().removeprefix("torch.")}

    # -- generation: every request goes through the engine's queue ---------------------------
    def _submit(self, requests: list[Request]) -> list[Future]:
        return self.engine.submit(
            requests,
            [self.adapter] * len(requests),
            max_new_tokens=self.max_new_tokens,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            model=self._answered_as(),
            template=self.template,
        )

    def _answered_as(self) -> str:
        """The ``model`` of this view's responses."""
        return self.model

    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        futures = self._submit(requests)
        return [f.exception() or f.result() for f in futures]

    async def _agenerate(self, requests: list[Request]) -> list[Response | BaseException]:
        futures = [asyncio.wrap_future(f) for f in self._submit(requests)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def key_fields(self, request: Request) -> dict[str, Any]:
        fields = request.key_fields()
        fields["temperature"] = request.temperature or 0.0
        if fields["max_tokens"] is None:
            fields["max_tokens"] = self.max_new_tokens
        fields["dtype"] = self._dtype_key()
        if self.template is not None:  # another template is another prompt
            fields["template"] = self.template.to_config()
        return fields
