"""The adapter on disk: the contract between training and every backend that serves it.

An adapter directory is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``)
plus apprentice's ``manifest.json``. This module owns what the trainer writes and every
reader (the local and vLLM engines, the servers, binding) relies on: the manifest, the
content hash that names an adapter's weights in caches and on servers, and whether vLLM
can serve it. It imports nothing from the rest of apprentice, so any layer may use it.

The servability rules are vLLM's own. Where the installed vLLM exposes one, it is read from
vLLM itself, at first use (the import costs seconds, so never when apprentice is imported);
without vLLM, apprentice's copy of vLLM 0.32.0's rules stands in:

- ``vllm/config/lora.py``: ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``
  are the values the *engine's* ``max_lora_rank`` may take (``VLLM_LORA_RANKS`` reads
  them); an adapter's ``r`` may be any positive integer up to it (r=4, 12 or 24 are served
  by an engine with max_lora_rank 8, 16 or 32).
- ``vllm/lora/peft_helper.py`` (``PEFTHelper.validate_legal``, which vLLM runs on every
  adapter it loads): refused are ``r > max_lora_rank``, ``bias != "none"`` ("Adapter bias
  is not supported"), ``use_dora``, ``modules_to_save``, and more that apprentice's copy
  does not list (``lora_bias``, PiSSA/OLoRA/LoftQ inits, ...). ``check_servable`` runs
  vLLM's own check too and adds its words to the reasons.
- ``vllm/lora/utils.py`` (``get_supported_lora_modules``): every linear layer of the model
  takes LoRA, plus the ``embedding_modules`` of its vLLM class (``embed_tokens`` and
  ``lm_head`` for Llama, ``vllm/model_executor/models/llama.py``); ``lora_model.py`` refuses
  an adapter with weights for any other module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
import typing
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MERGED_STAMP",
    "VLLM_LORA_RANKS",
    "AdapterManifest",
    "Servability",
    "adapter_dir",
    "adapter_hash",
    "check_servable",
    "is_adapter_file",
    "read_manifest",
    "smallest_lora_rank",
    "versioned_name",
    "vllm_lora_modules",
    "vllm_refusal",
    "write_manifest",
]

SCHEMA = "apprentice.adapter"
VERSION = 1
CONFIG = "adapter_config.json"
# Beside an ``export --merged`` model: what it came from, and how its base loaded.
MERGED_STAMP = "apprentice_merged.json"

log = logging.getLogger(__name__)

# vLLM 0.32.0's ``MaxLoRARanks`` (vllm/config/lora.py), for when vLLM is not installed.
FALLBACK_LORA_RANKS = frozenset({1, 8, 16, 32, 64, 128, 256, 320, 512})


def _from_vllm(module: str) -> Any | None:
    """The installed vLLM's ``module``, or None without vLLM. The first import of vLLM's
    config takes ~5 s beyond torch (torch._dynamo, pydantic configs): only at first use."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
    except Exception as exc:  # installed but broken: the copy of its rules stands in
        log.warning(
            "vLLM is installed but %s failed to import (%s); using 0.32.0's rules", module, exc
        )
        return None


class _LoRARanks(Set):
    """The values vLLM's engine option ``max_lora_rank`` may take, read from the installed
    vLLM when first used (``typing.get_args(vllm.config.lora.MaxLoRARanks)``), else
    ``FALLBACK_LORA_RANKS``. An adapter's own rank only has to be <= the engine's."""

    def _ranks(self) -> frozenset[int]:
        config = _from_vllm("vllm.config.lora")
        if config is None:
            return FALLBACK_LORA_RANKS
        return frozenset(typing.get_args(config.MaxLoRARanks))

    def __contains__(self, rank: object) -> bool:
        return rank in self._ranks()

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._ranks()))

    def __len__(self) -> int:
        return len(self._ranks())

    def __repr__(self) -> str:
        return f"VLLM_LORA_RANKS({sorted(self._ranks())})"


VLLM_LORA_RANKS = _LoRARanks()

# model_type of the architectures whose vLLM class lists ``embed_tokens`` / ``lm_head`` in
# ``embedding_modules`` (vllm/model_executor/models/{llama,mixtral,qwen3,granite,...}.py);
# for the others (qwen2, gpt2, phi3, ...) vLLM has no LoRA layer for the embeddings.
VLLM_EMBEDDING_LORA_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen3",
        "qwen3_moe",
        "granite",
        "granitemoe",
        "minicpm",
        "nemotron",
        "cohere",
        "exaone4",
        "jamba",
        "phimoe",
        "solar",
    }
)
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})

# Used only when the model is not at hand: the names decoder-only families give their
# linear layers (attention and MLP projections). With the model, ``vllm_lora_modules``
# reads the real ones.
COMMON_LINEAR_NAMES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
        "dense",
        "fc1",
        "fc2",
        "query_key_value",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "c_attn",
        "c_proj",
        "c_fc",
    }
)


# -- files and identity -------------------------------------------------------------------------
def is_adapter_file(name: str) -> bool:
    """The files that make an adapter's identity (weights and configs, not the manifest)."""
    return name.startswith(("adapter_", "model")) and name.endswith(
        (".safetensors", ".bin", ".json")
    )


def adapter_dir(name: str, path: str | os.PathLike) -> Path:
    """``path`` resolved, once it is known to be a PEFT adapter directory."""
    folder = Path(path).expanduser()
    if not (folder / CONFIG).is_file():
        what = "does not exist" if not folder.exists() else f"has no {CONFIG}"
        raise FileNotFoundError(
            f"adapter {name!r}: {str(path)!r} {what}; pass a PEFT adapter directory "
            f"({CONFIG} + adapter_model.safetensors)"
        )
    return folder.resolve()


def adapter_hash(adapter_dir: str | os.PathLike) -> str:
    """Content hash of the adapter's weights and config: the adapter's identity in caches,
    on servers and in vLLM's adapter names. ``lm.adapter_files.read_adapter`` computes the
    same hash from the bytes it reads."""
    path = Path(adapter_dir)
    digest = hashlib.sha256()
    files = [p for p in sorted(path.iterdir()) if is_adapter_file(p.name)]
    if not files:
        raise FileNotFoundError(f"{path} holds no {CONFIG} / adapter_model.safetensors")
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def versioned_name(name: str, digest: str, first: str) -> str:
    """The name a server (vLLM) serves adapter ``name`` with content hash ``digest`` under:
    ``name`` itself for ``first``, the weights first served under it, else
    ``name-<hash8>``. vLLM keys its prefix cache by name and path (and ``LoRARequest``
    equality by name alone), so other weights under a reused name, written over the same
    path, would be answered from KV of the old ones."""
    return name if digest == first else f"{name}-{digest[:8]}"


# -- the manifest -------------------------------------------------------------------------------
@dataclass
class AdapterManifest:
    name: str
    kind: str  # "causal" | "seq2seq"
    method: str  # "lora" | "full"
    base_model: str
    base_model_hash: str
    dataset_hash: str
    predictors: list[str]
    train_config: dict[str, Any]
    lora_config: dict[str, Any] | None
    metrics: dict[str, Any]
    servable: dict[str, Any]
    adapter_hash: str = ""
    # How the base was loaded (StudentLoading.changed(): revision, dtype, 4-bit, ...);
    # export --merged and serving load it the same way. Empty: the defaults.
    base_model_options: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    version: int = VERSION
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(adapter_dir: str | os.PathLike, manifest: AdapterManifest) -> Path:
    """Writes ``manifest.json`` (atomically), stamping it with the adapter's content hash."""
    path = Path(adapter_dir) / "manifest.json"
    manifest.adapter_hash = adapter_hash(adapter_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def read_manifest(adapter_dir: str | os.PathLike) -> AdapterManifest:
    path = Path(adapter_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{adapter_dir} has no manifest.json: not an apprentice adapter directory"
        )
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an apprentice adapter manifest")
    return AdapterManifest(**data)


# -- servability by vLLM ------------------------------------------------------------------------
@dataclass
class Servability:
    vllm: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            "servable by vLLM" if self.vllm else "not servable by vLLM: " + "; ".join(self.reasons)
        )


def smallest_lora_rank(r: int) -> int | None:
    """The smallest engine ``max_lora_rank`` that serves an adapter of rank ``r`` (None: none)."""
    fitting = [rank for rank in VLLM_LORA_RANKS if rank >= r]
    return min(fitting) if fitting else None


def vllm_lora_modules(model: Any) -> frozenset[str]:
    """The module-name suffixes vLLM accepts LoRA weights for on this (transformers, not
    peft-wrapped) model: its linear layers, and the embeddings where vLLM's class for the
    architecture has embedding LoRA (``VLLM_EMBEDDING_LORA_TYPES``)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
    }
    names.discard("lm_head")  # vLLM's lm_head is a ParallelLMHead, not a linear layer
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in VLLM_EMBEDDING_LORA_TYPES:
        names |= EMBEDDING_MODULES
    return frozenset(names)


def vllm_refusal(peft_config: Mapping[str, Any], max_lora_rank: int) -> str | None:
    """What the installed vLLM says when it refuses this ``adapter_config.json`` on an engine
    with ``max_lora_rank``: the check it runs on every adapter it loads
    (``PEFTHelper.from_dict(config).validate_legal(LoRAConfig(max_lora_rank=...))``,
    vllm/lora/worker_manager.py). None when it accepts it, or when vLLM is not installed."""
    helper = _from_vllm("vllm.lora.peft_helper")
    config = _from_vllm("vllm.config.lora")
    if helper is None or config is None:
        return None
    try:
        checked = helper.PEFTHelper.from_dict(dict(peft_config))
        checked.validate_legal(config.LoRAConfig(max_lora_rank=max_lora_rank))
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def check_servable(
    kind: str,
    *,
    r: int,
    target_modules: Iterable[str],
    bias: str = "none",
    use_dora: bool = False,
    modules_to_save: list[str] | None = None,
    full_finetune: bool = False,
    lora_modules: Iterable[str] | None = None,
    peft_config: Mapping[str, Any] | None = None,
) -> Servability:
    """Says precisely why vLLM would refuse this adapter, if it would. ``lora_modules``:
    the modules vLLM takes LoRA on for this model (``vllm_lora_modules(model)``); without
    it the targets are checked against common linear-layer names (and the embeddings,
    which vLLM adapts only for some architectures, are refused). ``peft_config``: more of
    the adapter's ``adapter_config.json`` (e.g. ``lora_alpha``, ``init_lora_weights``), or
    all of it. A causal adapter also goes through the installed vLLM's own check
    (``vllm_refusal``), whose words are added to the reasons."""
    reasons = []
    if kind == "seq2seq":
        reasons.append("vLLM does not serve encoder-decoder (T5) models; use the local backend")
    if full_finetune:
        return Servability(not reasons, reasons)
    target_modules = list(target_modules)
    if smallest_lora_rank(r) is None:
        reasons.append(f"rank r={r} is above vLLM's largest max_lora_rank {max(VLLM_LORA_RANKS)}")
    if bias != "none":
        reasons.append(f'bias={bias!r} is not supported (vLLM: "Adapter bias is not supported")')
    if use_dora:
        reasons.append("DoRA (use_dora=True) is not supported")
    if modules_to_save:
        reasons.append(f"modules_to_save={modules_to_save} is not supported")
    if kind == "causal":
        known = COMMON_LINEAR_NAMES if lora_modules is None else frozenset(lora_modules)
        unsupported = sorted(set(target_modules) - known)
        if unsupported:
            where = "this model's linear layers" if lora_modules is not None else "linear layers"
            reasons.append(f"target modules {unsupported} are not {where}, which vLLM adapts")
        config = {"r": r, "lora_alpha": r, "target_modules": target_modules, "bias": bias}
        config |= {"use_dora": use_dora, "modules_to_save": modules_to_save}
        refused = vllm_refusal({**config, **(peft_config or {})}, max(VLLM_LORA_RANKS))
        if refused:
            reasons.append(f"vLLM refuses it: {refused}")
    return Servability(not reasons, reasons)
