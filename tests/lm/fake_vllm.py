"""A stand-in for the part of vLLM 0.26.0 that VLLMLM uses, holding to vLLM's own rules.

vLLM cannot run on a CPU test machine, so ``install(monkeypatch)`` puts this module's
``LLM``, ``SamplingParams`` and ``LoRARequest`` where ``import vllm`` finds them. Each rule
below is vLLM's, read from the released wheel's source (the file is named at the rule);
a bug that vLLM would show shows here too. What it does not do is compute anything: an
answer says which adapter weights produced it, with which settings.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

SAMPLING_EPS = 1e-5  # vllm/sampling_params.py, _SAMPLING_EPS
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py, MaxLoRARanks
BLOCK = 4  # tokens per KV block (vLLM's default is 16; small prompts here)


class SamplingParams:
    """vllm/sampling_params.py: ``__post_init__``, ``_verify_args`` and
    ``_verify_greedy_sampling`` run when the params are made."""

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
        stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if temperature < 0.0 or temperature > 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if any(not s for s in stop):
            raise ValueError("stop cannot contain an empty string.")
        if temperature < SAMPLING_EPS and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        if temperature < SAMPLING_EPS:  # greedy: these are set aside
            top_p, top_k, min_p = 1.0, 0, 0.0
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.min_p, self.repetition_penalty = min_p, repetition_penalty
        self.max_tokens, self.stop, self.seed = max_tokens, stop, seed


class LoRARequest:
    """vllm/lora/request.py: equal and hashed by ``lora_name`` alone; the id must be > 0."""

    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str = "") -> None:
        if lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {lora_int_id}")
        assert lora_path, "lora_path cannot be empty"
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)


class LoRAAdapterNotFoundError(Exception):
    """vllm/lora/utils.py: raised (a plain Exception) for a path with no adapter."""


def _load(request: LoRARequest, max_lora_rank: int) -> str:
    """vllm/lora/worker_manager.py ``_load_adapter`` and vllm/lora/peft_helper.py
    ``validate_legal``: the adapter's weights' identity, or the exception vLLM raises."""
    folder = Path(request.lora_path)
    if not (folder / "adapter_config.json").is_file():
        raise LoRAAdapterNotFoundError(
            f"Loading lora {request.lora_name} failed: No adapter found for {folder}"
        )
    config = json.loads((folder / "adapter_config.json").read_text())
    errors = []
    if config.get("modules_to_save"):
        errors.append("vLLM only supports modules_to_save being None.")
    if config.get("use_dora"):
        errors.append("vLLM does not yet support DoRA.")
    if config["r"] > max_lora_rank:
        errors.append(f"LoRA rank {config['r']} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        errors.append("Adapter bias is not supported.")
    if errors:
        raise ValueError(" ".join(errors))
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
        not read again; a refused adapter raises (it never returns False)."""
        if request.lora_int_id not in self.weights:
            self.disk_reads += 1
            self.weights[request.lora_int_id] = _load(request, self.max_lora_rank)
        self.added.append((request.lora_name, request.lora_int_id))
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return self.weights.pop(lora_id, None) is not None


class LLM:
    """``vllm.LLM``: the engine options it is made with, and ``generate``."""

    made: list[LLM] = []

    def __init__(self, model: str, **options) -> None:
        lora = options.get("max_lora_rank", 16)
        if lora not in MAX_LORA_RANKS:  # vllm/config/lora.py
            raise ValueError(f"max_lora_rank must be one of {MAX_LORA_RANKS}, got {lora}")
        max_loras = options.get("max_loras", 1)
        cpu = options.get("max_cpu_loras") or max_loras
        if cpu < max_loras:  # vllm/config/lora.py, LoRAConfig.__post_init__
            raise ValueError(f"max_cpu_loras ({cpu}) must be >= max_loras ({max_loras})")
        self.model, self.options = model, options
        self.llm_engine = LLMEngine(lora, options.get("max_model_len") or 96)
        # vllm/v1/core/kv_cache_utils.py: a block's hash takes the prompt's tokens so far and,
        # as extra key, the request's ``lora_name`` (``_gen_lora_extra_hash_keys``): KV made
        # with one adapter's weights is reused for any request under that name.
        self.prefix_cache: dict[tuple, str] = {}
        self.calls: list[int] = []
        type(self).made.append(self)

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        """vllm/entrypoints/offline_utils.py ``_render_and_add_requests``: prompts are added
        one by one; the first that fails aborts those already added and raises, so the whole
        call fails. vllm/v1/engine/input_processor.py ``_validate_prompt_len``: an empty
        prompt, or one of max_model_len tokens or more, fails."""
        limit = self.llm_engine.model_config.max_model_len
        for prompt in prompts:
            length = len(prompt["prompt_token_ids"])
            if length == 0:
                raise ValueError("The decoder prompt cannot be empty")
            if length >= limit:
                raise ValueError(
                    f"The decoder prompt (length {length}) is longer than the maximum model "
                    f"length of {limit}."
                )
        for lora in lora_request:
            if lora is not None:  # vllm/lora/worker_manager.py _apply_adapters: (re)load
                self.llm_engine.add_lora(lora)
        self.calls.append(len(prompts))
        return [
            types.SimpleNamespace(outputs=self._complete(p["prompt_token_ids"], params, lora))
            for p, params, lora in zip(prompts, sampling_params, lora_request, strict=True)
        ]

    def _complete(self, ids: list[int], params: SamplingParams, lora: LoRARequest | None):
        weights = self.llm_engine.weights[lora.lora_int_id] if lora else "base"
        name = lora.lora_name if lora else None
        cached = len(ids) - 1 - (len(ids) - 1) % BLOCK  # full blocks, the last token computed
        key = (name, tuple(ids[:cached]))
        if cached:
            weights = self.prefix_cache.setdefault(key, weights)  # a hit: the cached KV's
        text = (
            f"{weights} t={params.temperature} top_p={params.top_p} top_k={params.top_k} "
            f"min_p={params.min_p} rep={params.repetition_penalty} max={params.max_tokens} "
            f"len={len(ids)}"
        )
        return [
            types.SimpleNamespace(index=i, text=text, token_ids=[1, 2], finish_reason="stop")
            for i in range(params.n)
        ]


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
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(made=LLM.made)
