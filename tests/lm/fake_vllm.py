"""A stand-in for the part of vLLM 0.32.0 that VLLMLM uses, holding to vLLM's own rules.

``install(monkeypatch)`` puts this module's ``LLM``, ``SamplingParams`` and ``LoRARequest``
where ``import vllm`` finds them, so the batching and adapter bookkeeping tests run in a
second and without vLLM. Each rule below is vLLM's, read from the installed wheel's source
(the file is named at the rule), and tests/lm/test_vllm_contract.py checks every one of
them against the real engine, parametrized over [fake, real]: a rule that drifts fails
there. What it does not do is compute anything: an answer says which adapter weights
produced it, with which settings.

Two deliberate differences, each for tests/serve/fake_vllm_serve.py, the ``vllm serve``
stand-in built on this one: ``VLLMValidationError`` is also a ``ValueError`` (that
server answers 400 for a ValueError, as vLLM's does for a ``VLLMClientError``), and an
adapter missing on disk raises ``LoRAAdapterNotFoundError`` (vLLM raises a plain
``Exception`` with the same text; that server answers 404 for it). Adapters are served
whether or not ``enable_lora`` is passed (that server does not pass it).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import types
from pathlib import Path

SAMPLING_EPS = 1e-5  # vllm/sampling_params.py, _SAMPLING_EPS: below it, greedy
MAX_TEMP = 1e-2  # vllm/sampling_params.py, _MAX_TEMP: a smaller temperature is raised to it
MAX_N = 16384  # vllm/envs.py, VLLM_MAX_N_SEQUENCES
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py, MaxLoRARanks
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")  # config/model.py
# vllm/lora/peft_helper.py, _init_is_supported: inits that only set the first weights
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# The LLM(...) options this stand-in knows, each a field of vllm/engine/arg_utils.py's
# EngineArgs; any other is refused as EngineArgs refuses an unknown one.
OPTIONS = frozenset(
    {
        "enable_lora",
        "max_lora_rank",
        "max_loras",
        "max_cpu_loras",
        "lora_dtype",
        "dtype",
        "seed",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "max_model_len",
        "max_num_seqs",
        "enable_prefix_caching",
        "enforce_eager",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "revision",
        "tokenizer_revision",
        "trust_remote_code",
        "quantization",
    }
)
# vllm/model_executor/layers/quantization/__init__.py, QuantizationMethods: vLLM 0.32 has no
# "bitsandbytes" (config/model.py, _verify_quantization refuses any other name)
QUANTIZATION_METHODS = (
    "awq",
    "auto_awq",
    "fp8",
    "fbgemm_fp8",
    "fp_quant",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mxfp8",
    "modelopt_mixed",
    "auto_gptq",
    "gptq",
    "gptq_marlin",
    "awq_marlin",
    "humming",
    "compressed-tensors",
    "experts_int8",
    "quark",
    "moe_wna16",
    "torchao",
    "inc",
    "mxfp4",
    "gpt_oss_mxfp4",
    "deepseek_v4_fp8",
    "online",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "mxfp8",
)
BLOCK = 4  # tokens per KV block (vLLM's default is 16; small prompts here)
ANSWER_TOKENS = 8  # every answer's length in tokens, when max_tokens does not cut it


# -- vllm/exceptions.py -------------------------------------------------------------------------
class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError, ValueError):  # ValueError: see the module docstring
    def __init__(self, message: str, *, parameter: str | None = None, value=None) -> None:
        super().__init__(message)
        self.parameter, self.value = parameter, value

    def __str__(self) -> str:
        pairs = (("parameter", self.parameter), ("value", self.value))
        extras = ", ".join(f"{key}={value}" for key, value in pairs if value is not None)
        return f"{super().__str__()} ({extras})" if extras else super().__str__()


class LoRAAdapterNotFoundError(Exception):  # see the module docstring
    pass


class SamplingParams:
    """vllm/sampling_params.py: ``__post_init__`` (a temperature in (0, 0.01) is raised to
    0.01), ``_verify_args`` and, for greedy, ``_verify_greedy_sampling``, in that order."""

    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        max_tokens: int | None = 16,
        stop: str | list[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if 0 < temperature < MAX_TEMP:
            temperature = MAX_TEMP
        self.stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.min_p, self.repetition_penalty = min_p, repetition_penalty
        self.max_tokens, self.seed = max_tokens, seed
        self._verify_args()
        if temperature < SAMPLING_EPS:  # greedy: these are set aside
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {n}.")

    def _verify_args(self) -> None:
        n, temperature, max_tokens = self.n, self.temperature, self.max_tokens
        bad_temperature = {"parameter": "temperature", "value": temperature}
        if not isinstance(n, int):
            raise VLLMValidationError(f"n must be an int, but is of type {type(n)}")
        if n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {n}.")
        if n > MAX_N:
            raise VLLMValidationError(
                f"n must be at most {MAX_N}, got {n}. To increase this limit, set the "
                "VLLM_MAX_N_SEQUENCES environment variable."
            )
        if self.repetition_penalty <= 0.0:
            raise VLLMValidationError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )
        if not math.isfinite(temperature):
            raise VLLMValidationError(
                f"temperature must be a finite number, got {temperature}.", **bad_temperature
            )
        if temperature < 0.0:
            raise VLLMValidationError(
                f"temperature must be non-negative, got {temperature}.", **bad_temperature
            )
        if temperature > 2.0:
            raise VLLMValidationError(
                f"temperature must be in [0, 2], got {temperature}.", **bad_temperature
            )
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(
                f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p", value=self.top_p
            )
        if self.top_k < -1:
            raise VLLMValidationError(
                f"top_k must be 0 (disable), or at least 1, got {self.top_k}."
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise VLLMValidationError(f"min_p must be in [0, 1], got {self.min_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {max_tokens}.",
                parameter="max_tokens",
                value=max_tokens,
            )
        if any(not s for s in self.stop):
            raise VLLMValidationError("stop cannot contain an empty string.")


class LoRARequest:
    """vllm/lora/request.py: equal and hashed by ``lora_name`` alone; the id must be > 0 and
    the path non-empty."""

    def __init__(
        self,
        lora_name: str,
        lora_int_id: int,
        lora_path: str = "",
        base_model_name: str | None = None,
        load_inplace: bool = False,
    ) -> None:
        if lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {lora_int_id}")
        assert lora_path, "lora_path cannot be empty"
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path
        self.base_model_name, self.load_inplace = base_model_name, load_inplace

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)


def lora_extra_hash_keys(lora: LoRARequest | None) -> list[tuple[str, str, str]]:
    """vllm/v1/core/kv_cache_utils.py ``_gen_lora_extra_hash_keys``: a prompt's KV blocks are
    keyed by its tokens and the adapter's name *and path*."""
    return [("lora", lora.lora_name, lora.lora_path)] if lora else []


def _refusals(config: dict, max_lora_rank: int) -> list[str]:
    """vllm/lora/peft_helper.py: ``from_dict``, ``_validate_features`` and
    ``validate_legal``, in their order and words."""
    missing = {"r", "lora_alpha", "target_modules"} - set(config)
    if missing:
        return [f"Missing required configuration fields: {missing}"]
    errors = []
    unsupported = [
        m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")
    ]
    if unsupported:
        errors.append(
            "vLLM only supports modules_to_save being either None or "
            f'["classifier", "score"] for classification models. Unsupported modules_to_save: '
            f"{unsupported}"
        )
    if config.get("use_dora"):
        errors.append("vLLM does not yet support DoRA.")
    if config.get("lora_bias"):
        errors.append("vLLM does not support LoRA bias (lora_bias).")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        errors.append(
            f"vLLM does not support init_lora_weights={init!r}. Inits such as PiSSA, OLoRA, "
            "CorDA and LoftQ modify the base model weights when PEFT loads the adapter. "
            "Convert it to a regular LoRA adapter with PEFT's "
            "path_initial_model_for_weight_conversion, or set init_lora_weights to true if "
            "the served base model already contains the modified weights."
        )
    rank = max([config["r"], *(config.get("rank_pattern") or {}).values()])
    if rank > max_lora_rank:
        errors.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        errors.append("Adapter bias is not supported.")
    return errors


def _worker_error(message: str, kind: type[Exception] = Exception) -> Exception:
    """How an error in the worker reaches the caller of ``llm_engine.add_lora``:
    vllm/v1/executor/multiproc_executor.py wraps it, vllm/v1/engine/core.py prefixes it and
    vllm/v1/engine/core_client.py raises it as a plain Exception."""
    error = kind(
        f"Call to add_lora method failed: Worker failed with error '{message}', please check "
        "the stack trace above for the root cause"
    )
    error.detail = message  # the server answers a missing adapter with this alone
    return error


def _load(request: LoRARequest, max_lora_rank: int) -> str:
    """vllm/lora/worker_manager.py ``_load_adapter``: the adapter's weights' identity, or the
    exception vLLM raises."""
    folder = Path(request.lora_path)
    if not (folder / "adapter_config.json").is_file():
        raise _worker_error(
            f"Loading lora {request.lora_name} failed: No adapter found for {folder}",
            LoRAAdapterNotFoundError,
        )
    errors = _refusals(json.loads((folder / "adapter_config.json").read_text()), max_lora_rank)
    if errors:
        raise _worker_error(" ".join(errors))
    weights = (folder / "adapter_model.safetensors").read_bytes()
    return "w" + hashlib.sha256(weights).hexdigest()[:6]


class LLMEngine:
    def __init__(self, max_lora_rank: int, max_model_len: int) -> None:
        self.max_lora_rank = max_lora_rank
        self.model_config = types.SimpleNamespace(max_model_len=max_model_len)
        self.weights: dict[int, str] = {}  # lora_int_id -> the weights loaded under it
        self.added: list[tuple[str, int]] = []
        self.removed: list[int] = []
        self.disk_reads = 0
        self.engine_core = types.SimpleNamespace(shutdown=self._shutdown)
        self.shut_down = False

    def _shutdown(self, timeout: float | None = None) -> None:
        self.shut_down = True  # vllm/v1/engine/core_client.py, MPClient.shutdown

    def add_lora(self, request: LoRARequest) -> bool:
        """vllm/lora/worker_manager.py ``add_adapter``: an id already loaded is only touched,
        not read again (unless ``load_inplace``); a refused adapter raises, never False."""
        if request.lora_int_id not in self.weights or request.load_inplace:
            self.disk_reads += 1
            self.weights[request.lora_int_id] = _load(request, self.max_lora_rank)
        self.added.append((request.lora_name, request.lora_int_id))
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return self.weights.pop(lora_id, None) is not None

    def list_loras(self) -> list[int]:
        return list(self.weights)  # a list: the engine core's answer comes back through msgpack


def _check_options(options: dict) -> None:
    """vllm/engine/arg_utils.py ``EngineArgs`` (unknown names), config/model.py (dtype) and
    config/lora.py ``LoRAConfig`` (pydantic: a ValidationError is a ValueError)."""
    for name in options:
        if name not in OPTIONS:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{name}'")
    if options.get("dtype", "auto") not in DTYPES:
        raise ValueError(f"validation error for ModelConfig\ndtype\n  {_one_of(DTYPES)}")
    quantization = options.get("quantization")
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ValueError(
            f"Unknown quantization method: {quantization}. Must be one of "
            f"{list(QUANTIZATION_METHODS)}."
        )
    if options.get("max_lora_rank", 16) not in MAX_LORA_RANKS:
        raise ValueError(
            f"1 validation error for LoRAConfig\nmax_lora_rank\n  {_one_of(MAX_LORA_RANKS)}"
        )
    max_loras = options.get("max_loras", 1)
    cpu = options.get("max_cpu_loras") or max_loras  # arg_utils.py: <= 0 is None
    if cpu < max_loras:
        raise ValueError(
            f"1 validation error for LoRAConfig\n  Value error, max_cpu_loras ({cpu}) must be "
            f">= max_loras ({max_loras})."
        )


def _one_of(values: tuple) -> str:
    """pydantic's words for a value outside a Literal."""
    shown = [repr(v) for v in values]
    return f"Input should be {', '.join(shown[:-1])} or {shown[-1]}"


def _as_list(value, count: int, what: str) -> list:
    """vllm/entrypoints/common/offline.py ``_params_to_seq`` / ``_lora_request_to_seq``."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise VLLMValidationError(
                f"The lengths of prompts ({count}) and {what} ({len(value)}) must be the same."
            )
        return list(value)
    return [value] * count


def _check_prompt(length: int, limit: int) -> None:
    """vllm/renderers/params.py ``_token_len_check`` (longer than the model) and
    vllm/v1/engine/input_processor.py ``_validate_prompt_len`` (empty, or no room left)."""
    if length > limit:
        qualifier = "at least " if length == limit + 1 else ""
        raise VLLMValidationError(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {qualifier}{length} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt.",
            parameter="input_tokens",
            value=length,
        )
    if length == 0:
        raise VLLMValidationError("The decoder prompt cannot be empty")
    if length == limit:
        raise VLLMValidationError(
            f"The decoder prompt (length {length}) plus the number of requested output tokens "
            f"(at least 1) is longer than the maximum model length of {limit}. Make sure that "
            "`max_model_len` is no smaller than the number of text tokens (prompt + requested "
            "output tokens)."
        )


class LLM:
    """``vllm.LLM``: the engine options it is made with, and ``generate``."""

    made: list[LLM] = []

    def __init__(self, model: str, **options) -> None:
        _check_options(options)
        self.model, self.options = model, options
        self.llm_engine = LLMEngine(
            options.get("max_lora_rank", 16), options.get("max_model_len") or 96
        )
        # Prompt-prefix KV blocks, keyed as vLLM keys them (lora_extra_hash_keys): KV made
        # with one adapter's weights is reused for any request with that name and path.
        self.prefix_cache: dict[tuple, str] = {}
        self.calls: list[int] = []
        type(self).made.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        """vllm/entrypoints/common/offline.py: one SamplingParams and LoRARequest for all
        prompts or one each; prompts are added one by one and the first that fails aborts
        those already added and raises, so the whole call fails."""
        params = _as_list(sampling_params or SamplingParams(), len(prompts), "params")
        loras = _as_list(lora_request, len(prompts), "lora_request")
        limit = self.llm_engine.model_config.max_model_len
        for prompt in prompts:
            _check_prompt(len(prompt["prompt_token_ids"]), limit)
        for lora in loras:
            if lora is not None:  # vllm/lora/worker_manager.py _apply_adapters: (re)load
                self.llm_engine.add_lora(lora)
        self.calls.append(len(prompts))
        return [
            types.SimpleNamespace(outputs=self._complete(p["prompt_token_ids"], sp, lora))
            for p, sp, lora in zip(prompts, params, loras, strict=True)
        ]

    def _complete(self, ids: list[int], params: SamplingParams, lora: LoRARequest | None):
        weights = self.llm_engine.weights[lora.lora_int_id] if lora else "base"
        cached = len(ids) - 1 - (len(ids) - 1) % BLOCK  # full blocks, the last token computed
        key = (*lora_extra_hash_keys(lora), tuple(ids[:cached]))
        if cached:
            weights = self.prefix_cache.setdefault(key, weights)  # a hit: the cached KV's
        text = (
            f"{weights} t={params.temperature} top_p={params.top_p} top_k={params.top_k} "
            f"min_p={params.min_p} rep={params.repetition_penalty} max={params.max_tokens} "
            f"len={len(ids)}"
        )
        return [_completion(i, text, params) for i in range(params.n)]


def _completion(index: int, text: str, params: SamplingParams) -> types.SimpleNamespace:
    """One answer of ANSWER_TOKENS tokens, cut by ``max_tokens`` (finish_reason "length")
    and ending before the first stop string found (finish_reason "stop", stop_reason that
    string), as vllm/v1/engine/detokenizer.py and output_processor.py report them."""
    count = ANSWER_TOKENS if params.max_tokens is None else min(ANSWER_TOKENS, params.max_tokens)
    finish, stop_reason = ("length" if count < ANSWER_TOKENS else "stop"), None
    found = [(text.find(s), s) for s in params.stop if s in text]
    if found:
        at, stop_reason = min(found)
        text, finish = text[:at], "stop"
    return types.SimpleNamespace(
        index=index,
        text=text,
        token_ids=list(range(count)),
        finish_reason=finish,
        stop_reason=stop_reason,
    )


def install(monkeypatch) -> types.SimpleNamespace:
    """Makes ``import vllm`` find this stand-in; returns where the made LLMs are recorded."""
    LLM.made = []
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    request_module = types.ModuleType("vllm.lora.request")
    request_module.LoRARequest = LoRARequest
    modules = {"vllm": vllm, "vllm.lora": types.ModuleType("vllm.lora")}
    modules["vllm.lora.request"] = request_module
    # The CUDA build's platform: base and adapter rows share a call (vllm/platforms/cuda.py)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    modules["vllm.platforms"] = platforms
    quantization = types.ModuleType("vllm.model_executor.layers.quantization")
    quantization.QUANTIZATION_METHODS = list(QUANTIZATION_METHODS)
    modules["vllm.model_executor"] = types.ModuleType("vllm.model_executor")
    modules["vllm.model_executor.layers"] = types.ModuleType("vllm.model_executor.layers")
    modules["vllm.model_executor.layers.quantization"] = quantization
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(made=LLM.made)
