"""VLLMLM: an in-process vLLM engine serving a causal student and its LoRA adapters (GPU).

It mirrors LocalLM: one engine per (base model, engine options) in a process, and every
``VLLMLM`` is a view of it with one adapter (or none). A batching thread gathers the
requests that arrive close together -- from any number of threads and program runs --
into one ``LLM.generate`` call with a ``SamplingParams`` and a ``LoRARequest`` per prompt;
vLLM's scheduler batches mixed adapters itself (up to ``max_loras`` distinct ones at once).

Prompts are rendered and tokenized here (``dataset.tokenize.render_prompt``) and sent as
token ids, so the student sees exactly the prompts it was trained on. Each adapter gets
an integer id from the engine's table; re-loading a name with other weights gets a new id
(vLLM caches adapters by id: reusing one would keep serving the old weights).

vLLM serves decoder-only models only: a T5 student is refused here (serve it with LocalLM).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.lm.base import LMError, Request, Response, Usage
from apprentice.lm.cache import Cache
from apprentice.lm.engine_view import EngineView, check_batching
from apprentice.lm.local_engine import EngineStats, adapter_dir
from apprentice.lm.usage import Price

__all__ = ["VLLMEngine", "VLLMLM", "get_vllm_engine"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it on a CUDA machine with `pip install 'apprentice[vllm]'` (offline: "
    "scripts/vllm_wheels.sh); on a CPU, serve the student with LocalLM instead"
)


@dataclass(frozen=True)
class EngineOptions:
    """What must be equal for two VLLMLMs to share an engine."""

    max_lora_rank: int = 16
    max_loras: int = 4
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    seed: int = 0


class VLLMLM(EngineView):
    """``VLLMLM("path/to/base", adapters={"triage": "runs/x/adapters/triage/adapter"}, adapter="triage")``.

    ``max_lora_rank``: the largest adapter rank the engine accepts (one of vLLM's 1, 8, 16,
    32, 64, 128, 256, 320, 512); ``max_loras``: distinct adapters in one batch.
    ``max_batch_size`` requests at most share a generate call; a call starts when that many
    wait or no request came for ``batch_wait_ms``. Temperature None or 0 is greedy.
    """

    backend = "vllm"

    def __init__(
        self,
        base_model: str | Path,
        *,
        adapters: dict[str, str | Path] | None = None,
        adapter: str | None = None,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        max_batch_size: int = 256,
        batch_wait_ms: float = 5.0,
        max_new_tokens: int = 256,
        cache: bool | str | Cache | None = False,
        price: Price | None = None,
        history_size: int = 200,
    ) -> None:
        from apprentice.train.config import VLLM_LORA_RANKS

        if max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {sorted(VLLM_LORA_RANKS)}, got {max_lora_rank!r}"
            )
        if type(max_loras) is not int or max_loras < 1:
            raise ValueError(f"max_loras must be an integer >= 1, got {max_loras!r}")
        check_batching(
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            max_new_tokens=max_new_tokens,
        )
        options = EngineOptions(
            max_lora_rank, max_loras, dtype, gpu_memory_utilization, max_model_len, seed
        )
        self.engine = get_vllm_engine(base_model, options)
        for name, path in (adapters or {}).items():
            self.engine.load_adapter(name, path)
        self._check_loaded(adapter, base_model)
        super().__init__(
            str(base_model), adapter=adapter, cache=cache, price=price, history_size=history_size
        )
        self.options = options
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = float(batch_wait_ms)
        self.max_new_tokens = max_new_tokens

    def with_adapter(self, name: str | None) -> VLLMLM:
        """A view of the same engine answering with adapter ``name`` (None: the base model)."""
        return VLLMLM(
            self.model,
            adapter=name,
            **self._view_options(),
            **vars(self.options),
        )

    def to_config(self) -> dict[str, Any]:
        return {**self._base_config(), **vars(self.options)}

    def _dtype_key(self) -> str:
        return self.options.dtype

    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        futures = self.engine.submit(
            requests, self.adapter, self.max_new_tokens, self.max_batch_size, self.batch_wait_ms
        )
        return [f.exception() or f.result() for f in futures]


@dataclass(frozen=True)
class _Adapter:
    path: str
    hash: str
    request: Any  # vllm.lora.request.LoRARequest


@dataclass(eq=False)
class _Job:
    prompt_ids: list[int]
    adapter: str | None
    params: Any  # vllm.SamplingParams
    max_batch_size: int
    wait_s: float
    future: Future


class VLLMEngine:
    """One ``vllm.LLM`` with its adapter table and batching thread."""

    def __init__(self, base_model: str, options: EngineOptions) -> None:
        check_vllm_servable(base_model)
        vllm = import_vllm()
        from transformers import AutoTokenizer

        self.base_model = base_model
        self.options = options
        self.vllm = vllm
        self.llm = vllm.LLM(
            model=base_model,
            enable_lora=True,
            max_lora_rank=options.max_lora_rank,
            max_loras=options.max_loras,
            dtype=options.dtype,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            seed=options.seed,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.stats = EngineStats()
        self._adapters: dict[str, _Adapter] = {}
        self._ids = itertools.count(1)  # LoRARequest ids: positive, never reused
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue[list[_Job]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"VLLMEngine({self.base_model!r}, max_lora_rank={self.options.max_lora_rank})"

    # -- adapters ------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def adapter_hash(self, name: str) -> str | None:
        adapter = self._adapters.get(name)
        return adapter.hash if adapter else None

    def adapter_path(self, name: str) -> str | None:
        adapter = self._adapters.get(name)
        return adapter.path if adapter else None

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = False) -> str:
        """Registers a PEFT adapter under ``name`` (vLLM loads it now, to fail here rather than
        at the first request); returns its content hash."""
        from apprentice.train.export import adapter_hash

        if not isinstance(name, str) or not name:
            raise ValueError(f"an adapter name is a non-empty string, got {name!r}")
        folder = adapter_dir(name, path)
        self._check_adapter(name, folder)
        digest = adapter_hash(folder)
        with self._lock:
            current = self._adapters.get(name)
            if current is not None and current.hash == digest:
                return digest
            if current is not None and not replace:
                raise ValueError(
                    f"adapter {name!r} is already loaded from {current.path} (hash "
                    f"{current.hash}); pass replace=True to swap in {folder} (hash {digest})"
                )
            from vllm.lora.request import LoRARequest

            request = LoRARequest(name, next(self._ids), str(folder))
            if not self.llm.llm_engine.add_lora(request):
                raise LMError(f"vLLM refused adapter {name!r} from {folder}")
            if current is not None:
                self.llm.llm_engine.remove_lora(current.request.lora_int_id)
            self._adapters[name] = _Adapter(str(folder), digest, request)
        log.info("loaded adapter %r from %s into %r", name, folder, self)
        return digest

    def _check_adapter(self, name: str, folder: Path) -> None:
        import json

        from apprentice.train.export import read_manifest

        rank = json.loads((folder / "adapter_config.json").read_text()).get("r")
        if isinstance(rank, int) and rank > self.options.max_lora_rank:
            raise ValueError(
                f"adapter {name!r} has rank r={rank}, above max_lora_rank="
                f"{self.options.max_lora_rank}; pass a larger max_lora_rank"
            )
        if (folder / "manifest.json").is_file():
            servable = read_manifest(folder).servable
            if not servable.get("vllm", True):
                raise ValueError(
                    f"adapter {name!r} is not servable by vLLM: "
                    + "; ".join(servable.get("reasons", []))
                )

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                raise KeyError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            self.llm.llm_engine.remove_lora(adapter.request.lora_int_id)

    # -- requests ------------------------------------------------------------------------
    def submit(
        self,
        requests: list[Request],
        adapter: str | None,
        max_new_tokens: int,
        max_batch_size: int,
        batch_wait_ms: float,
    ) -> list[Future]:
        from apprentice.dataset.tokenize import render_prompt

        jobs, futures = [], []
        for request in requests:
            future: Future = Future()
            futures.append(future)
            try:
                prompt = render_prompt(request.messages, self.tokenizer, "causal")
                jobs.append(
                    _Job(
                        self.tokenizer(prompt, add_special_tokens=False)["input_ids"],
                        adapter,
                        self._params(request, max_new_tokens),
                        max_batch_size,
                        batch_wait_ms / 1000,
                        future,
                    )
                )
            except Exception as exc:  # a bad request fails alone
                future.set_exception(exc)
        if jobs:
            self._ensure_thread()
            self._queue.put(jobs)
        return futures

    def _params(self, request: Request, max_new_tokens: int):
        limit = request.max_tokens if request.max_tokens is not None else max_new_tokens
        if type(limit) is not int or limit < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {limit!r}")
        return self.vllm.SamplingParams(
            n=request.n,
            temperature=request.temperature or 0.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            max_tokens=limit,
            stop=list(request.stop) if request.stop else None,
            seed=request.seed,
        )

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="vllm-lm", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            batch = self._queue.get()
            first = batch[0]
            arrived = last = time.perf_counter()
            # Gather until the batch is full, or no request came for ``wait_s``, or the
            # first one has waited ten times that.
            while len(batch) < first.max_batch_size:
                deadline = min(last, arrived + 9 * first.wait_s) + first.wait_s
                left = deadline - time.perf_counter()
                try:
                    more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.extend(more)
                last = time.perf_counter()
            for start in range(0, len(batch), first.max_batch_size):
                jobs = batch[start : start + first.max_batch_size]
                try:
                    self._run(jobs)
                except Exception as exc:  # never let the thread die with requests waiting on it
                    log.exception("the vLLM gathering thread failed on a batch")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(
                                LMError(f"vLLM backend failed: {type(exc).__name__}: {exc}")
                            )

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        with self._lock:  # adapters cannot change under a generate call
            ready = []
            for job in jobs:
                if job.adapter is not None and job.adapter not in self._adapters:
                    job.future.set_exception(
                        LMError(
                            f"adapter {job.adapter!r} is not loaded in {self!r}; loaded: "
                            f"{sorted(self._adapters)}"
                        )
                    )
                else:
                    ready.append(job)
            if not ready:
                return
            began = time.perf_counter()
            try:
                outputs = self.llm.generate(
                    [{"prompt_token_ids": job.prompt_ids} for job in ready],
                    [job.params for job in ready],
                    use_tqdm=False,
                    lora_request=[
                        self._adapters[j.adapter].request if j.adapter else None for j in ready
                    ],
                )
            except Exception as exc:
                log.exception("vLLM generate failed for %d request(s)", len(ready))
                for job in ready:
                    job.future.set_exception(LMError(f"vLLM generate failed: {exc!r}"))
                return
            self._count(ready, time.perf_counter() - began)
        for job, output in zip(ready, outputs, strict=True):
            job.future.set_result(self._response(job, output))

    def _response(self, job: _Job, output: Any) -> Response:
        completions = sorted(output.outputs, key=lambda c: c.index)
        return Response(
            texts=[c.text for c in completions],
            usage=Usage(len(job.prompt_ids), sum(len(c.token_ids) for c in completions)),
            model=job.adapter or self.base_model,
            finish_reasons=[c.finish_reason for c in completions],
        )

    def _count(self, jobs: list[_Job], seconds: float) -> None:
        rows = sum(job.params.n for job in jobs)
        self.stats.requests += len(jobs)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.max_rows = max(self.stats.max_rows, rows)
        self.stats.busy_s += seconds


# -- checks and one engine per (base model, options) --------------------------------------------
def check_vllm_servable(base_model: str) -> None:
    """Refuses a student vLLM cannot serve (encoder-decoder, e.g. T5), before loading vLLM."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_model)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot read the config of base model {base_model!r}: {exc}"
        ) from None
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{base_model!r} is an encoder-decoder ({config.model_type}) model: vLLM does not "
            "serve encoder-decoder (T5) students; serve it with LocalLM (the transformers + "
            "peft backend: `apprentice serve --backend local`)"
        )


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            f"the vllm backend needs vLLM, which cannot be imported ({exc}); {INSTALL_HINT}"
        ) from None
    return vllm


_ENGINES: dict[tuple[str, EngineOptions], tuple[tuple, VLLMEngine]] = {}  # see lm/local.py
_ENGINES_LOCK = threading.Lock()


def get_vllm_engine(base_model: str | Path, options: EngineOptions) -> VLLMEngine:
    """The process's engine for (base model, options), started on first use."""
    from apprentice.lm.local import _model_key, weights_stamp

    key = (_model_key(base_model), options)
    stamp = weights_stamp(key[0])
    with _ENGINES_LOCK:
        held = _ENGINES.get(key)
        if held is None or held[0] != stamp:
            held = _ENGINES[key] = (stamp, VLLMEngine(key[0], options))
    return held[1]
