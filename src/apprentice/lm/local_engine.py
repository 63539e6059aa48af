"""LocalEngine: one base model with its tokenizer, loaded adapters and batching thread.

There is one engine per (base model, device, dtype) in a process (``local.get_engine``),
shared by every ``LocalLM`` on that base. The adapter table, ``submit``, the request
checks and the batching thread are the shared ``lm.engine.Engine``; this file is what is
local: loading the model with transformers, putting adapters into peft slots
(``local_adapters``: a load fills a fresh slot, so it is atomic), and the batched
``generate`` call (``local_batch.generate_batch``).

A request is held to the model's context (``max_model_len``): its prompt and ``max_tokens``
must fit, or it fails alone with a ValueError. A request submitted with a ``cancel`` event
stops when the event is set: dropped if still queued, its rows ended at the next step if
running.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from apprentice.lm.adapter_files import AdapterFiles, read_adapter
from apprentice.lm.base import Request, Response
from apprentice.lm.engine import (
    BASE,
    AdapterNotLoaded,
    Engine,
    EngineStats,
    Job,
    LoadedAdapter,
    adapter_dir,
)
from apprentice.lm.local_adapters import add_slot, merge_adapter, remove_slot
from apprentice.lm.local_batch import Sampling, generate_batch
from apprentice.model_context import context_length
from apprentice.student_loading import StudentLoading

__all__ = ["AdapterNotLoaded", "EngineStats", "LocalEngine", "adapter_dir", "context_length"]

log = logging.getLogger(__name__)


class LocalEngine(Engine):
    """Holds the model; ``submit`` is the only way requests reach it."""

    label = "local"

    def __init__(
        self,
        base_model: str,
        device: str,
        dtype: Any,
        merged: tuple[str, Path] | None = None,
        *,
        loading: StudentLoading | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.base_model = base_model
        self.device = device
        self.dtype = dtype
        self.loading = loading or StudentLoading()
        hub = self.loading.hub_options()
        try:
            config = AutoConfig.from_pretrained(base_model, **hub)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load base model {base_model!r}: not a local model directory, and "
                f"loading it as a hub name failed: {exc}"
            ) from None
        self.kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        self.tokenizer = AutoTokenizer.from_pretrained(base_model, **hub)
        self.max_model_len = context_length(config, self.tokenizer)
        self.network = self._load_base()
        # merged: one adapter folded into the weights (faster; no base, no other adapters)
        self.merged: tuple[str, LoadedAdapter] | None = None
        if merged is not None:
            self._merge(*merged)
        gen = self.network.generation_config
        # Both: the generation config may name the chat template's end-of-turn token, while
        # training appends the tokenizer's eos to every target (dataset/tokenize.py).
        self.eos_ids = _as_set(gen.eos_token_id) | _as_set(self.tokenizer.eos_token_id)
        if not self.eos_ids:
            raise ValueError(f"base model {base_model!r} has no eos token: it could never stop")
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self.share_prefix = True  # turned off if the model's cache is not a plain KV cache
        self._slots = 0  # slots ever filled: each load gets a new peft adapter name
        self._start_table()

    def _load_base(self):
        import transformers

        auto = "AutoModelForSeq2SeqLM" if self.kind == "seq2seq" else "AutoModelForCausalLM"
        options = self.loading.model_options(dtype=self.dtype, device=self.device)
        model = getattr(transformers, auto).from_pretrained(self.base_model, **options)
        if "device_map" in options:  # 4-bit: placed on the device as it loaded
            return model.eval()
        return model.to(self.device).eval()

    def _merge(self, name: str, path: str | Path) -> None:
        files = read_adapter(adapter_dir(name, path))
        self.network = merge_adapter(self.network, files)
        self.merged = (name, LoadedAdapter(str(files.path), files.hash, BASE))

    def __repr__(self) -> str:
        merged = f", merged={self.merged[0]!r}" if self.merged else ""
        return (
            f"LocalEngine({self.base_model!r}, {self.kind}, device={self.device!r}, "
            f"dtype={self.dtype}{merged})"
        )

    # -- adapters: peft slots ---------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        return [self.merged[0]] if self.merged else super().adapter_names()

    def _adapter(self, name: str) -> LoadedAdapter | None:
        if self.merged:
            return self.merged[1] if name == self.merged[0] else None
        return super()._adapter(name)

    def _check_adapter(self, name: str, files: AdapterFiles) -> None:
        if self.merged:
            raise ValueError(
                f"{self!r} serves adapter {self.merged[0]!r} merged into its weights and "
                f"cannot load {name!r}; use a LocalLM without merge=True for several adapters"
            )

    def _install(self, name: str, files: AdapterFiles) -> str:
        self._slots += 1
        slot = f"slot-{self._slots}"
        self.network = add_slot(self.network, slot, files, self.device)  # raises: unchanged
        return slot

    def _uninstall(self, handle: str) -> None:
        self.network = remove_slot(self.network, handle)

    def unload_adapter(self, name: str) -> None:
        if self.merged:
            raise ValueError(
                f"{self!r} has its adapter merged into its weights: it cannot unload it"
            )
        super().unload_adapter(name)

    # -- generation -------------------------------------------------------------------------
    def _sampling(self, request: Request, max_new_tokens: int, stop: tuple[str, ...]) -> Sampling:
        temperature = request.temperature or 0.0
        do_sample = temperature > 0
        top_p = request.top_p if request.top_p is not None else 1.0
        return Sampling(
            do_sample,
            temperature if do_sample else None,
            top_p if do_sample else None,
            request.seed if do_sample else None,
        )

    def _generate(self, jobs: list[Job]) -> list[Response]:
        return generate_batch(self, jobs)

    def _unservable(self, adapter: str) -> str | None:
        if self.merged and adapter != self.merged[0]:
            return (
                f"{self!r} serves only adapter {self.merged[0]!r} (merged into its weights); "
                f"a request for {'the base model' if adapter == BASE else repr(adapter)} needs "
                "a LocalLM without merge=True"
            )
        return None if self.merged else super()._unservable(adapter)


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}
