"""Engine: what the local (transformers + peft) and vLLM engines share, written once.

An engine holds one base model, the table of adapters loaded into it and a batching
thread. ``submit`` queues requests from any thread and returns futures; the thread gathers
what arrives close together into one generate call. The two engines differ only where
they must (as peft's tuners share one ``BaseTuner``):

- ``_install`` / ``_uninstall``: put an adapter's bytes into the model, take them out;
- ``_sampling``: the generation settings of one request, in the engine's own terms;
- ``_generate``: answer a batch of jobs with one call.

Everything else is here: the adapter table with its atomic load / replace / unload, the
request checks (a bad request fails alone, before anything is submitted) and the guard
that fails a batch's requests, never the thread; the gathering loop that feeds it is
``lm/batching.py``.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.adapter import adapter_dir
from apprentice.formats.prompt import PromptTemplate
from apprentice.lm.adapter_files import AdapterFiles, read_adapter
from apprentice.lm.base import LMError, Request, Response
from apprentice.lm.batching import BASE, BatchingLoop, Job

__all__ = [
    "BASE",
    "AdapterLoadError",
    "AdapterNotLoaded",
    "Engine",
    "EngineStats",
    "Job",
    "adapter_dir",
    "check_adapter_name",
]

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 256
# A token covers at most this many characters (long runs of spaces or punctuation included):
# a prompt longer than the context times this cannot fit, and is refused before tokenizing.
MAX_CHARS_PER_TOKEN = 64
TOKENIZER_COPIES = (
    4  # threads that can encode or decode at once (a fast tokenizer is not thread-safe)
)


@dataclass
class EngineStats:
    """Counters of an engine's work: ``rows / batches`` is the mean batch size."""

    requests: int = 0
    batches: int = 0  # generate calls
    rows: int = 0  # sequences asked for (a request with n=2 is two rows)
    max_rows: int = 0  # the largest batch
    busy_s: float = 0.0  # seconds spent in generate calls
    prefix_tokens_saved: int = 0  # prompt tokens not recomputed thanks to shared prefixes
    tokens: int = 0  # tokens generated, a cancelled row's up to where it stopped
    cancelled: int = 0  # requests whose cancel event was set before they were answered


class AdapterNotLoaded(LMError):
    """A request's adapter is not (or no longer) loaded when its batch runs."""


class AdapterLoadError(ValueError):
    """The adapter's weights do not fit the model (shapes, missing or extra tensors, targets),
    or the backend refused them."""


@dataclass(frozen=True)
class LoadedAdapter:
    path: str  # where the files were read from (their real location)
    hash: str  # the content hash of the bytes that were loaded
    handle: Any  # the engine's own: a peft slot name, a vLLM LoRARequest


def check_adapter_name(name: Any) -> None:
    """An adapter name is what clients send as ``model`` and see in ``/v1/models``: a short
    printable string (no control characters, no unpaired surrogates)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_NAME_CHARS
        or not name.isprintable()
        or name.strip() != name
        or name == BASE
    ):
        raise ValueError(
            f"an adapter name is 1-{MAX_NAME_CHARS} printable characters without surrounding "
            f"spaces, and not {BASE!r}; got {name!r:.300}"
        )


class Engine(BatchingLoop):
    """The shared part. A subclass sets ``base_model``, ``kind``, ``tokenizer`` and
    ``max_model_len``, calls ``_start_table()``, and defines the three hooks."""

    label = "engine"  # in error messages: "<label> generate failed ..."
    base_slot: Any = BASE  # the handle of rows that use no adapter
    base_model: str
    kind: str  # "causal" | "seq2seq"
    tokenizer: Any
    max_model_len: int

    def _start_table(self) -> None:
        self.stats = EngineStats()
        self._adapters: dict[str, LoadedAdapter] = {}
        self._lock = threading.RLock()  # guards the model and the adapter table
        self._tokenizers: queue.SimpleQueue = queue.SimpleQueue()  # copies not in use
        self._tokenizer_copies = 0
        self._tokenizer_lock = threading.Lock()  # guards making copies
        self._queue: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        # Guards starting and stopping the batching thread against submits: a submit either
        # queues before the thread checks for last work, or starts a new thread.
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def shutdown(self) -> None:
        """Stops the batching thread; the engine's memory goes once no LM holds it. An
        engine that runs outside this process (vLLM's) stops it here too."""
        self.close()

    # -- the hooks ----------------------------------------------------------------------------
    def _install(self, name: str, files: AdapterFiles) -> Any:
        """Loads ``files`` into the model (under the lock); its handle. On failure the
        model serves exactly what it served before, and the error says why."""
        raise NotImplementedError

    def _uninstall(self, handle: Any) -> None:
        raise NotImplementedError

    def _sampling(self, request: Request, max_new_tokens: int, stop: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _generate(self, jobs: list[Job]) -> list[Response]:
        """One response per job, in order (under the lock: adapters cannot change)."""
        raise NotImplementedError

    def _check_adapter(self, name: str, files: AdapterFiles) -> None:
        """Refuses, before anything changes, an adapter this engine cannot serve."""

    def _shares_call(self, first: Job, job: Job) -> bool:
        """Whether ``job`` can join ``first``'s generate call."""
        return job.sampling == first.sampling

    # -- adapters -----------------------------------------------------------------------------
    @property
    def has_adapters(self) -> bool:
        return bool(self._adapters)

    def adapter_names(self) -> list[str]:
        # no lock: it would wait for a running batch; copying a dict is atomic under the GIL
        return list(self._adapters)

    def _adapter(self, name: str) -> LoadedAdapter | None:
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
        files = read_adapter(path, root=root)  # checked and read once, outside the lock
        self._check_adapter(name, files)
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
            handle = self._install(name, files)  # raises: unchanged
            self._adapters[name] = LoadedAdapter(str(files.path), files.hash, handle)
            if current is not None:
                self._uninstall(current.handle)
        log.info("loaded adapter %r from %s (hash %s) into %r", name, files.path, files.hash, self)
        return files.hash

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise KeyError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            self._uninstall(self._adapters.pop(name).handle)
        log.info("unloaded adapter %r from %r", name, self)

    # -- requests -----------------------------------------------------------------------------
    def encode(self, messages, template: PromptTemplate | None = None) -> list[int]:
        """The prompt's token ids, exactly as ``dataset.tokenize.tokenize_rows`` makes them
        (``template``: the chat template and its variables the student was trained with)."""
        from apprentice.formats.prompt import render_prompt

        limit = self.max_model_len * MAX_CHARS_PER_TOKEN
        chars = sum(len(m.get("content") or "") for m in messages)
        if chars <= limit:  # cheap: the template adds a few characters per message
            prompt = render_prompt(
                messages, self.tokenizer, self.kind, **(template or PromptTemplate()).options()
            )
            chars = len(prompt)
        if chars > limit:
            raise ValueError(
                f"the prompt has {chars} characters; this model's context is "
                f"{self.max_model_len} tokens (max_model_len), which hold at most {limit} "
                f"characters at {MAX_CHARS_PER_TOKEN} per token: send a shorter prompt"
            )
        with self._tokenizer() as tokenizer:
            return tokenizer(prompt, add_special_tokens=self.kind == "seq2seq")["input_ids"]

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer() as tokenizer:
            # No clean-up of spaces before punctuation: the reply is the text the model wrote
            # (a T5-format reply escapes spaces; cleaning up would change values).
            return tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    @contextmanager
    def _tokenizer(self):
        """A copy of the tokenizer that this thread alone uses meanwhile: up to
        ``TOKENIZER_COPIES`` threads encode and decode at once, none waits on one long call."""
        try:
            tokenizer = self._tokenizers.get_nowait()
        except queue.Empty:
            with self._tokenizer_lock:
                made = self._tokenizer_copies
                if made < TOKENIZER_COPIES:
                    self._tokenizer_copies += 1
            if made == 0:
                tokenizer = self.tokenizer
            elif made < TOKENIZER_COPIES:
                tokenizer = copy.deepcopy(self.tokenizer)
            else:
                tokenizer = self._tokenizers.get()  # all in use: the first one given back
        try:
            yield tokenizer
        finally:
            self._tokenizers.put(tokenizer)

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
        template: PromptTemplate | None = None,
    ) -> list[Future]:
        """Queues requests (request i uses ``adapters[i]``, None for the base); one future
        each, resolving to a Response or failing with that request's own error. Every check
        a request can fail runs here, so a bad one fails alone and never takes down the
        generate call of the others. Setting ``cancel`` stops them: their futures then fail
        with CancelledError."""
        jobs: list[Job] = []
        futures: list[Future] = []
        turns = [0]  # shared by this call's jobs: the batches it has had, for taking turns
        batching = (
            max_new_tokens, max_batch_size, batch_wait_ms / 1000, model, cancel, turns, template
        )  # fmt: skip
        for request, adapter in zip(requests, adapters, strict=True):
            future: Future = Future()
            futures.append(future)
            try:
                jobs.append(self._job(request, adapter, future, *batching))
            except Exception as exc:  # a bad request fails alone
                future.set_exception(exc)
        if jobs:
            with self._thread_lock:
                self._ensure_thread()
                self._queue.put(jobs)
        return futures

    def _job(
        self,
        request,
        adapter,
        future,
        max_new_tokens,
        max_batch_size,
        wait_s,
        model,
        cancel,
        turns,
        template,
    ) -> Job:
        asked = request.max_tokens
        if asked is not None and (type(asked) is not int or asked < 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {asked!r}")
        prompt_ids = self.encode(request.messages, template)
        limit = self._token_limit(len(prompt_ids), asked, max_new_tokens)
        stop = tuple(s for s in request.stop or () if s)  # "" would match at once: dropped
        return Job(
            prompt_ids=prompt_ids,
            adapter=adapter or BASE,
            sampling=self._sampling(request, limit, stop),
            n=request.n,
            max_new_tokens=limit,
            stop=stop,
            max_batch_size=max_batch_size,
            wait_s=wait_s,
            model=model,
            future=future,
            submitted=time.perf_counter(),
            cancel=cancel,
            turns=turns,
        )

    def _token_limit(self, prompt: int, asked: int | None, default: int) -> int:
        """The tokens a request may generate: what it asked for (else ``default``), refused
        when the prompt is empty, or when it and that many tokens do not fit the model's
        context. A causal model holds both in one sequence; T5 reads the prompt and writes
        the answer separately."""
        context = self.max_model_len
        room = context - prompt if self.kind == "causal" else context
        if prompt == 0:
            raise ValueError("the prompt is empty (0 tokens): send at least one token")
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

    def _run_batch(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        with self._lock:  # adapters cannot change under a generate call
            ready = []
            for job in jobs:
                error = self._unservable(job.adapter)
                if job.cancel is not None and job.cancel.is_set():
                    self.stats.cancelled += 1
                    job.future.set_exception(CancelledError())
                elif error:
                    job.future.set_exception(AdapterNotLoaded(error))
                else:
                    served = self._adapter(job.adapter)
                    job.slot = served.handle if served else self.base_slot
                    ready.append(job)
            if not ready:
                return
            began = time.perf_counter()
            try:
                responses = self._generate(ready)
            except Exception as exc:  # the whole batch failed: every request in it says why
                log.exception("%s generate failed for %d request(s)", self.label, len(ready))
                for job in ready:
                    job.future.set_exception(
                        LMError(
                            f"{self.label} generate failed on {self!r}: {type(exc).__name__}: {exc}"
                        )
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
        if adapter != BASE and adapter not in self._adapters:
            return (
                f"adapter {adapter!r} is not loaded in {self!r}; loaded: "
                f"{sorted(self._adapters)} (load it with load_adapter(name, path))"
            )
        return None

    def _count(self, jobs: list[Job], responses: list[Response], seconds: float) -> None:
        rows = sum(job.n for job in jobs)
        stats = self.stats
        stats.requests += len(jobs)
        stats.batches += 1
        stats.rows += rows
        stats.max_rows = max(stats.max_rows, rows)
        stats.busy_s += seconds
        stats.tokens += sum(r.usage.completion_tokens for r in responses)
        stats.cancelled += sum(1 for j in jobs if j.cancel is not None and j.cancel.is_set())
