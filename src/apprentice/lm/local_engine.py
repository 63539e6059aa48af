"""LocalEngine: one base model with its tokenizer, loaded adapters and batching thread.

There is one engine per (base model, device, dtype) in a process (``local.get_engine``),
shared by every ``LocalLM`` on that base. ``submit`` queues requests from any thread and returns
futures; the batching thread gathers what is queued into ``generate`` calls
(``local_batch.generate_batch``). Loading and unloading adapters takes the same lock as a
generate call, so adapters can be swapped while requests are being served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.lm.base import LMError, Request
from apprentice.lm.local_batch import BASE, Job, Sampling, generate_batch

__all__ = ["EngineStats", "LocalEngine", "adapter_dir"]

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters of an engine's work: ``rows / batches`` is the mean batch size."""

    requests: int = 0
    batches: int = 0  # generate calls
    rows: int = 0  # sequences generated (a request with n=2 is two rows)
    max_rows: int = 0  # the largest batch
    busy_s: float = 0.0  # seconds spent in generate calls
    prefix_tokens_saved: int = 0  # prompt tokens not recomputed thanks to shared prefixes


@dataclass(frozen=True)
class _Adapter:
    path: str
    hash: str


class LocalEngine:
    """Holds the model; ``submit`` is the only way requests reach it."""

    def __init__(
        self, base_model: str, device: str, dtype: Any, merged: tuple[str, Path] | None = None
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.base_model = base_model
        self.device = device
        self.dtype = dtype
        try:
            config = AutoConfig.from_pretrained(base_model)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load base model {base_model!r}: not a local model directory, and "
                f"loading it as a hub name failed: {exc}"
            ) from None
        self.kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.model = self._load_base()
        # merged: one adapter folded into the weights (faster; no base, no other adapters)
        self.merged: tuple[str, _Adapter] | None = None
        if merged is not None:
            self._merge(*merged)
        gen = self.model.generation_config
        self.eos_ids = _as_set(gen.eos_token_id) or _as_set(self.tokenizer.eos_token_id)
        if not self.eos_ids:
            raise ValueError(f"base model {base_model!r} has no eos token: it could never stop")
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self.share_prefix = True  # turned off if the model's cache is not a plain KV cache
        self.stats = EngineStats()
        self._adapters: dict[str, _Adapter] = {}
        self._lock = threading.RLock()  # guards the model and the adapter table
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not thread-safe
        self._queue: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _load_base(self):
        import transformers

        auto = "AutoModelForSeq2SeqLM" if self.kind == "seq2seq" else "AutoModelForCausalLM"
        model = getattr(transformers, auto).from_pretrained(self.base_model, dtype=self.dtype)
        return model.to(self.device).eval()

    def _merge(self, name: str, path: str | Path) -> None:
        from peft import PeftModel

        from apprentice.train.export import adapter_hash

        folder = adapter_dir(name, path)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = PeftModel.from_pretrained(self.model, str(folder), is_trainable=False)
        self.model = model.merge_and_unload().eval()
        self.merged = (name, _Adapter(str(folder), adapter_hash(folder)))

    def __repr__(self) -> str:
        merged = f", merged={self.merged[0]!r}" if self.merged else ""
        return (
            f"LocalEngine({self.base_model!r}, {self.kind}, device={self.device!r}, "
            f"dtype={self.dtype}{merged})"
        )

    # -- adapters ---------------------------------------------------------------------
    @property
    def has_adapters(self) -> bool:
        return bool(self._adapters)

    def adapter_names(self) -> list[str]:
        # no lock: it would wait for a running batch; copying a dict is atomic under the GIL
        return [self.merged[0]] if self.merged else list(self._adapters)

    def _adapter(self, name: str) -> _Adapter | None:
        if self.merged:
            return self.merged[1] if name == self.merged[0] else None
        return self._adapters.get(name)

    def adapter_hash(self, name: str) -> str | None:
        adapter = self._adapter(name)
        return adapter.hash if adapter else None

    def adapter_path(self, name: str) -> str | None:
        adapter = self._adapter(name)
        return adapter.path if adapter else None

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = False) -> str:
        """Loads a PEFT adapter directory under ``name``; returns its content hash. Loading
        the same content again is a no-op; other content under a loaded name needs ``replace``."""
        from apprentice.train.export import adapter_hash

        if not isinstance(name, str) or not name or "." in name or name == BASE:
            raise ValueError(
                f"an adapter name is a non-empty string without '.', and not {BASE!r}; got {name!r}"
            )
        if self.merged:
            raise ValueError(
                f"{self!r} serves adapter {self.merged[0]!r} merged into its weights and "
                f"cannot load {name!r}; use a LocalLM without merge=True for several adapters"
            )
        folder = adapter_dir(name, path)
        digest = adapter_hash(folder)
        with self._lock:
            current = self._adapters.get(name)
            if current is not None:
                if current.hash == digest:
                    return digest
                if not replace:
                    raise ValueError(
                        f"adapter {name!r} is already loaded from {current.path} (hash {current.hash}); "
                        f"pass replace=True to swap in {folder} (hash {digest})"
                    )
                self.unload_adapter(name)
            self._peft_load(name, folder)
            self._adapters[name] = _Adapter(str(folder), digest)
        log.info("loaded adapter %r from %s into %r", name, folder, self)
        return digest

    def _peft_load(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(folder), adapter_name=name, is_trainable=False
                )
        self.model.to(self.device).eval()

    def unload_adapter(self, name: str) -> None:
        if self.merged:
            raise ValueError(
                f"{self!r} has its adapter merged into its weights: it cannot unload it"
            )
        with self._lock:
            if name not in self._adapters:
                raise KeyError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            del self._adapters[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "adapter was active, setting another active"
                if self._adapters:
                    self.model.delete_adapter(name)
                else:  # the last one: back to the plain base model, no LoRA layers left
                    self.model = self.model.unload().eval()
        log.info("unloaded adapter %r from %r", name, self)

    # -- requests -----------------------------------------------------------------------
    def encode(self, messages) -> list[int]:
        """The prompt's token ids, exactly as ``dataset.tokenize.tokenize_rows`` makes them."""
        from apprentice.dataset.tokenize import render_prompt

        prompt = render_prompt(messages, self.tokenizer, self.kind)
        with self._tokenizer_lock:
            return self.tokenizer(prompt, add_special_tokens=self.kind == "seq2seq")["input_ids"]

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def submit(
        self,
        requests: list[Request],
        adapters: list[str | None],
        *,
        max_new_tokens: int = 256,
        max_batch_size: int = 64,
        batch_wait_ms: float = 5.0,
        model: str = "",
    ) -> list[Future]:
        """Queues requests (request i uses ``adapters[i]``, None for the base); one future
        each, resolving to a Response or failing with that request's own error."""
        jobs: list[Job] = []
        futures: list[Future] = []
        for request, adapter in zip(requests, adapters, strict=True):
            future: Future = Future()
            futures.append(future)
            try:
                jobs.append(
                    self._job(
                        request,
                        adapter,
                        future,
                        max_new_tokens,
                        max_batch_size,
                        batch_wait_ms,
                        model,
                    )
                )
            except Exception as exc:  # a bad request fails alone
                future.set_exception(exc)
        if jobs:
            self._ensure_thread()
            self._queue.put(jobs)
        return futures

    def _job(
        self, request, adapter, future, max_new_tokens, max_batch_size, batch_wait_ms, model
    ) -> Job:
        temperature = request.temperature or 0.0
        do_sample = temperature > 0
        top_p = request.top_p if request.top_p is not None else 1.0
        sampling = Sampling(
            do_sample,
            temperature if do_sample else None,
            top_p if do_sample else None,
            request.seed if do_sample else None,
        )
        limit = request.max_tokens if request.max_tokens is not None else max_new_tokens
        if type(limit) is not int or limit < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {limit!r}")
        return Job(
            prompt_ids=self.encode(request.messages),
            adapter=adapter or BASE,
            sampling=sampling,
            n=request.n,
            max_new_tokens=limit,
            stop=tuple(s for s in request.stop or () if s),
            max_batch_size=max_batch_size,
            wait_s=batch_wait_ms / 1000,
            model=model,
            future=future,
            submitted=time.perf_counter(),
        )

    # -- the batching thread ---------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._serve,
                        name=f"local-lm:{Path(self.base_model).name}",
                        daemon=True,
                    )
                    self._thread.start()

    def close(self) -> None:
        """Stops the batching thread once the queued requests are answered."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _serve(self) -> None:
        pending: deque[Job] = deque()
        while True:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.extend(item)
            # Gather until the batch is full, or no request came for the oldest job's
            # wait, or the oldest job has waited ten times that.
            first = pending[0]
            last_arrival = time.perf_counter()
            while sum(j.n for j in pending) < first.max_batch_size:
                deadline = min(last_arrival, first.submitted + 9 * first.wait_s) + first.wait_s
                left = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish what is pending, then stop
                    break
                pending.extend(item)
                last_arrival = time.perf_counter()
            batch = _take_batch(pending)
            try:
                self._run_batch(batch)
            except Exception as exc:  # never let the thread die with requests waiting on it
                log.exception("the local batching thread failed on a batch")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(LMError(f"local backend failed: {exc!r}"))

    def _run_batch(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        with self._lock:
            ready = []
            for job in jobs:
                error = self._unservable(job.adapter)
                if error:
                    job.future.set_exception(LMError(error))
                else:
                    ready.append(job)
            if not ready:
                return
            began = time.perf_counter()
            try:
                responses = generate_batch(self, ready)
            except Exception as exc:  # the whole batch failed: every request in it says why
                log.exception("local generate failed for a batch of %d request(s)", len(ready))
                for job in ready:
                    job.future.set_exception(
                        LMError(f"local generate failed on {self!r}: {type(exc).__name__}: {exc}")
                    )
                return
            self._count(ready, time.perf_counter() - began)
        for job, response in zip(ready, responses, strict=True):
            job.future.set_result(response)

    def _unservable(self, adapter: str) -> str | None:
        """Why a request for ``adapter`` cannot be answered now, or None."""
        if self.merged and adapter != self.merged[0]:
            return (
                f"{self!r} serves only adapter {self.merged[0]!r} (merged into its weights); "
                f"a request for {'the base model' if adapter == BASE else repr(adapter)} needs "
                "a LocalLM without merge=True"
            )
        if not self.merged and adapter != BASE and adapter not in self._adapters:
            return (
                f"adapter {adapter!r} is not loaded in {self!r}; loaded: "
                f"{sorted(self._adapters)} (load it with load_adapter(name, path))"
            )
        return None

    def _count(self, jobs: list[Job], seconds: float) -> None:
        rows = sum(job.n for job in jobs)
        stats = self.stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.rows += rows
        stats.max_rows = max(stats.max_rows, rows)
        stats.busy_s += seconds


def _take_batch(pending: deque[Job]) -> list[Job]:
    """The oldest job and the pending jobs that can share its generate call (same sampling
    settings), within the smallest ``max_batch_size`` among them; the rest stay queued."""
    first = pending.popleft()
    batch, rows, capacity = [first], first.n, first.max_batch_size
    kept: deque[Job] = deque()
    while pending:
        job = pending.popleft()
        if job.sampling == first.sampling and rows + job.n <= min(capacity, job.max_batch_size):
            batch.append(job)
            rows += job.n
            capacity = min(capacity, job.max_batch_size)
        else:
            kept.append(job)
    pending.extend(kept)
    return batch


def adapter_dir(name: str, path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no adapter_config.json"
        raise FileNotFoundError(
            f"adapter {name!r}: {str(path)!r} {what}; pass a PEFT adapter directory "
            "(adapter_config.json + adapter_model.safetensors)"
        )
    return folder.resolve()


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}
