"""LocalEngine: one base model with its tokenizer, loaded adapters and batching thread.

There is one engine per (base model, device, dtype) in a process (``local.get_engine``),
shared by every ``LocalLM`` on that base. ``submit`` queues requests from any thread and returns
futures; the batching thread gathers what is queued into ``generate`` calls
(``local_batch.generate_batch``). Loading and unloading adapters takes the same lock as a
generate call, so adapters can be swapped while requests are being served; a load reads the
adapter's files once and fills a fresh peft slot (``local_adapters``), so it is atomic.

A request is held to the model's context (``max_model_len``): its prompt and ``max_tokens``
must fit, or it fails alone with a ValueError. A request submitted with a ``cancel`` event
stops when the event is set: dropped if still queued, its rows ended at the next step if
running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.lm.adapter_files import read_adapter
from apprentice.lm.base import LMError, Request
from apprentice.lm.local_adapters import add_slot, check_adapter_name, merge_adapter, remove_slot
from apprentice.lm.local_batch import BASE, Job, Sampling, generate_batch, take_batch

__all__ = ["AdapterNotLoaded", "EngineStats", "LocalEngine", "adapter_dir", "context_length"]

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 512


@dataclass
class EngineStats:
    """Counters of an engine's work: ``rows / batches`` is the mean batch size."""

    requests: int = 0
    batches: int = 0  # generate calls
    rows: int = 0  # sequences generated (a request with n=2 is two rows)
    max_rows: int = 0  # the largest batch
    busy_s: float = 0.0  # seconds spent in generate calls
    prefix_tokens_saved: int = 0  # prompt tokens not recomputed thanks to shared prefixes
    tokens: int = 0  # tokens generated, a cancelled row's up to where it stopped
    cancelled: int = 0  # requests whose cancel event was set before they were answered


class AdapterNotLoaded(LMError):
    """A request's adapter is not (or no longer) loaded when its batch runs."""


@dataclass(frozen=True)
class _Adapter:
    path: str  # where the files were read from (their real location)
    hash: str  # the content hash of the bytes that were loaded
    slot: str  # the adapter's name inside peft


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
        self.max_model_len = context_length(config, self.tokenizer)
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
        self._slots = 0  # slots ever filled: each load gets a new peft adapter name
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
        files = read_adapter(adapter_dir(name, path))
        self.model = merge_adapter(self.model, files)
        self.merged = (name, _Adapter(str(files.path), files.hash, ""))

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

    def load_adapter(
        self, name: str, path: str | Path, *, replace: bool = False, root: Path | None = None
    ) -> str:
        """Loads a PEFT adapter directory under ``name``; returns the content hash of what was
        loaded. Loading the same content again is a no-op; other content under a loaded name
        needs ``replace``. With ``root``, the directory and its files must really lie inside
        it (relative paths start there). The load is atomic: if it fails, the engine serves
        exactly what it served before."""
        check_adapter_name(name)
        if self.merged:
            raise ValueError(
                f"{self!r} serves adapter {self.merged[0]!r} merged into its weights and "
                f"cannot load {name!r}; use a LocalLM without merge=True for several adapters"
            )
        files = read_adapter(path, root=root)  # checked and read once, outside the lock
        with self._lock:
            current = self._adapters.get(name)
            if current is not None:
                if current.hash == files.hash:
                    return files.hash
                if not replace:
                    raise ValueError(
                        f"adapter {name!r} is already loaded (hash {current.hash}); pass "
                        f"replace=True to swap in {str(path)!r} (hash {files.hash})"
                    )
            self._slots += 1
            slot = f"slot-{self._slots}"
            self.model = add_slot(self.model, slot, files, self.device)  # raises: unchanged
            self._adapters[name] = _Adapter(str(files.path), files.hash, slot)
            if current is not None:
                self.model = remove_slot(self.model, current.slot)
        log.info("loaded adapter %r from %s (hash %s) into %r", name, files.path, files.hash, self)
        return files.hash

    def unload_adapter(self, name: str) -> None:
        if self.merged:
            raise ValueError(
                f"{self!r} has its adapter merged into its weights: it cannot unload it"
            )
        with self._lock:
            if name not in self._adapters:
                raise KeyError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            self.model = remove_slot(self.model, self._adapters.pop(name).slot)
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
        cancel: threading.Event | None = None,
    ) -> list[Future]:
        """Queues requests (request i uses ``adapters[i]``, None for the base); one future
        each, resolving to a Response or failing with that request's own error. Setting
        ``cancel`` stops them: their futures then fail with CancelledError."""
        jobs: list[Job] = []
        futures: list[Future] = []
        batching = (max_new_tokens, max_batch_size, batch_wait_ms / 1000, model, cancel)
        for request, adapter in zip(requests, adapters, strict=True):
            future: Future = Future()
            futures.append(future)
            try:
                jobs.append(self._job(request, adapter, future, *batching))
            except Exception as exc:  # a bad request fails alone
                future.set_exception(exc)
        if jobs:
            self._ensure_thread()
            self._queue.put(jobs)
        return futures

    def _job(
        self, request, adapter, future, max_new_tokens, max_batch_size, wait_s, model, cancel
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
        asked = request.max_tokens
        if asked is not None and (type(asked) is not int or asked < 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {asked!r}")
        prompt_ids = self.encode(request.messages)
        return Job(
            prompt_ids=prompt_ids,
            adapter=adapter or BASE,
            sampling=sampling,
            n=request.n,
            max_new_tokens=self._token_limit(len(prompt_ids), asked, max_new_tokens),
            stop=tuple(s for s in request.stop or () if s),
            max_batch_size=max_batch_size,
            wait_s=wait_s,
            model=model,
            future=future,
            submitted=time.perf_counter(),
            cancel=cancel,
        )

    def _token_limit(self, prompt: int, asked: int | None, default: int) -> int:
        """The tokens a request may generate: what it asked for (else ``default``), refused
        when the prompt and that many tokens do not fit the model's context. A causal model
        holds both in one sequence; T5 reads the prompt and writes the answer separately."""
        context = self.max_model_len
        room = context - prompt if self.kind == "causal" else context
        if prompt > context or room < 1:
            raise ValueError(
                f"the prompt has {prompt} tokens; this model's context is {context} tokens "
                f"(max_model_len){', which leaves none to generate' if prompt <= context else ''}: "
                "send a shorter prompt"
            )
        if asked is None:
            return min(default, room)
        if asked > room:
            split = f", the prompt takes {prompt}" if self.kind == "causal" else ""
            raise ValueError(
                f"max_tokens={asked} does not fit: this model's context is {context} tokens "
                f"(max_model_len){split}, so at most {room} can be generated; ask for fewer"
            )
        return asked

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
            batch = take_batch(pending)
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
                if job.cancel is not None and job.cancel.is_set():
                    self.stats.cancelled += 1
                    job.future.set_exception(CancelledError())
                elif error:
                    job.future.set_exception(AdapterNotLoaded(error))
                else:
                    served = self._adapters.get(job.adapter)
                    job.slot = served.slot if served else BASE
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
            self._count(ready, responses, time.perf_counter() - began)
        for job, response in zip(ready, responses, strict=True):
            if job.cancel is not None and job.cancel.is_set():
                job.future.set_exception(CancelledError())
            else:
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

    def _count(self, jobs: list[Job], responses: list, seconds: float) -> None:
        rows = sum(job.n for job in jobs)
        stats = self.stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.rows += rows
        stats.max_rows = max(stats.max_rows, rows)
        stats.busy_s += seconds
        stats.tokens += sum(r.usage.completion_tokens for r in responses)
        stats.cancelled += sum(1 for j in jobs if j.cancel is not None and j.cancel.is_set())


def adapter_dir(name: str, path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no adapter_config.json"
        raise FileNotFoundError(
            f"adapter {name!r}: {str(path)!r} {what}; pass a PEFT adapter directory "
            "(adapter_config.json + adapter_model.safetensors)"
        )
    return folder.resolve()


def context_length(config: Any, tokenizer: Any) -> int:
    """The tokens the model can attend to: the config's position limit, else the tokenizer's
    ``model_max_length`` when it is a real one, else ``DEFAULT_CONTEXT`` (T5's relative
    positions have no limit in the config; T5 was trained on 512 tokens)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(text, name, None)
        if type(value) is int and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if type(limit) is int and 0 < limit < 10_000_000:  # transformers' "no limit" is 1e30
        return limit
    return DEFAULT_CONTEXT


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}
