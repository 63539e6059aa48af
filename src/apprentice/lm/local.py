"""LocalLM: an in-process transformers + peft backend for T5 and causal students, CPU or GPU.

The base model loads once per (base model, device, dtype) into a ``LocalEngine``
(``lm/local_engine.py``); every ``LocalLM`` is a view of an engine with one adapter (or
none). The engine's batching thread gathers the requests that arrive close together --
from any number of threads, program runs and views -- into batched ``generate`` calls
(``lm/local_batch.py``), mixing adapters in one batch through peft's per-row
``adapter_names``.

The prompt is ``formats.render_prompt`` tokenized exactly as ``tokenize_rows``
does, so the student sees at inference exactly what it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apprentice.adapter import adapter_dir, adapter_hash
from apprentice.formats.prompt import PromptTemplate
from apprentice.lm.cache import Cache
from apprentice.lm.engine import BASE, EngineStats
from apprentice.lm.engine_view import EngineView, check_batching
from apprentice.lm.engines import EngineTable, model_key, release_engines, weights_stamp
from apprentice.lm.local_engine import LocalEngine
from apprentice.lm.usage import Price
from apprentice.student_loading import (
    StudentLoading,
    serving_loading,
    trained_options,
    why_no_4bit,
)

__all__ = ["BASE", "EngineStats", "LocalEngine", "LocalLM", "get_engine", "release_engines"]


class LocalLM(EngineView):
    """``LocalLM("path/to/base", adapters={"triage": "runs/x/adapters/triage"}, adapter="triage")``.

    ``adapters`` are loaded into the shared engine of the base model; ``adapter`` is the one
    this LM answers with (None: the base model). ``lm.with_adapter(name)`` gives another view
    of the same engine. Temperature None or 0 is greedy decoding; above 0 samples with
    ``temperature`` and ``top_p``. ``max_batch_size`` rows at most share a generate call
    (1: one call per request); a batch starts when that many rows wait, or when no request
    has come for ``batch_wait_ms`` (at most ten times that after its oldest request).

    ``merge=True`` folds the one adapter in ``adapters`` into the weights of an engine of its
    own (nothing is written to disk): 1.3-1.6x faster on CPU for tiny students, the same
    greedy outputs up to float rounding, but that engine serves only this adapter.

    The base loads as the student trained: each option of ``loading`` (a ``StudentLoading``
    or its dict: hub revision, dtype, attention kernel, 4-bit quantization, remote code)
    that is not set is taken from the adapters' manifests (``base_model_options``; a full
    finetune's or merged model's own files for a base folder), and ``dtype``, when it names
    one, wins over both; else cuda serves in bf16 and a CPU in fp32. A 4-bit base that
    cannot load here (no CUDA GPU, or no bitsandbytes) is served unquantized, with a
    warning; remote code is never taken from a manifest (``student_loading.serving_loading``).
    """

    backend = "local"

    def __init__(
        self,
        base_model: str | Path,
        *,
        adapters: dict[str, str | Path] | None = None,
        adapter: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        max_batch_size: int = 64,
        batch_wait_ms: float = 5.0,
        max_new_tokens: int = 256,
        merge: bool = False,
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
            why_no_4bit=lambda: why_no_4bit(_resolve_device(device)),
        )
        served_dtype = loading.serving_dtype(dtype)
        check_batching(
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            max_new_tokens=max_new_tokens,
        )
        if merge:
            if len(adapters or {}) != 1 or (adapter is not None and adapter not in adapters):
                raise ValueError(
                    f"merge=True needs exactly one adapter in adapters= (and adapter= naming it), "
                    f"got adapters={adapters!r}, adapter={adapter!r}"
                )
            adapter = adapter or next(iter(adapters))
            self.engine = get_engine(
                base_model,
                device,
                served_dtype,
                merged=(adapter, adapters[adapter]),
                loading=loading,
            )
        else:
            self.engine = get_engine(base_model, device, served_dtype, loading=loading)
            for name, path in (adapters or {}).items():
                self.engine.load_adapter(name, path)
        self._check_loaded(adapter, base_model)
        super().__init__(
            str(base_model), adapter=adapter, cache=cache, price=price, history_size=history_size
        )
        self.device_option = device
        self.dtype_option = dtype
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = float(batch_wait_ms)
        self.max_new_tokens = max_new_tokens
        self.template = PromptTemplate.from_config(template) if template is not None else None
        self.merge = merge
        self.loading = loading

    @property
    def kind(self) -> str:
        return self.engine.kind

    def with_adapter(self, name: str | None) -> LocalLM:
        """A view of the same engine answering with adapter ``name`` (None: the base model);
        it shares this LM's cache and options."""
        if self.merge and name != self.adapter:
            raise ValueError(
                f"{self!r} has adapter {self.adapter!r} merged into its weights; a view with "
                f"{name!r} needs a LocalLM without merge=True"
            )
        return LocalLM(
            self.model,
            adapters={name: self.engine.adapter_path(name)} if self.merge else None,
            merge=self.merge,
            adapter=name,
            device=self.device_option,
            dtype=self.dtype_option,
            loading=self.loading,
            **self._view_options(),
        )

    # -- config and cache key ----------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        dtype = self.dtype_option
        return {
            **self._base_config(),
            "device": self.device_option,
            "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "merge": self.merge,
            # only when set: a config saved before these options loads the same
            **({"loading": self.loading.changed()} if self.loading.changed() else {}),
        }

    def _dtype_key(self) -> str:
        return str(self.engine.dtype)


# -- one engine per (base model, device, dtype) ------------------------------------------------
# key -> (weights stamp, engine). A model rewritten in place (a retrained full finetune, a
# rebuilt tiny student) has a new stamp, so it gets a new engine instead of stale weights;
# the old engine is dropped here and lives on only while an LM still holds it.
_TABLE = EngineTable()


def get_engine(
    base_model: str | Path,
    device: str | None = None,
    dtype: Any = None,
    *,
    merged: tuple[str, str | Path] | None = None,
    loading: StudentLoading | None = None,
) -> LocalEngine:
    """The process's engine for (base model, device, dtype, loading), loading the model on
    first use. ``device`` defaults to cuda when available, else cpu; ``dtype`` to bf16 on
    cuda, fp32 on cpu. ``merged=(name, path)``: an engine of its own with that adapter
    merged into the weights. ``loading``: revision, attention, 4-bit, remote code."""
    loading = loading or StudentLoading()
    loading.check(str(base_model))
    key_model = model_key(base_model)
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    merged_key = ""
    if merged is not None:
        merged_key = f"{merged[0]}:{adapter_hash(adapter_dir(*merged))}"
    how = json.dumps(loading.model_dump(mode="json", exclude={"dtype"}), sort_keys=True)
    key = (key_model, device, str(dtype), merged_key, how)
    stamp = weights_stamp(key_model)
    with _TABLE.lock:
        held = _TABLE.engines.get(key)
        if held is None or held[0] != stamp:
            engine = LocalEngine(key_model, device, dtype, merged, loading=loading)
            held = _TABLE.engines[key] = (stamp, engine)
    return held[1]


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _resolve_dtype(dtype: Any, device: str):
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"dtype must be a torch dtype or its name (e.g. 'bfloat16'), got {dtype!r}"
        )
    return value
