"""One ``generate`` call for a batch of queued requests (the local backend's inner loop).

Rows are padded (causal prompts on the left, T5 inputs on the right), mixed adapters are
chosen per row through peft's ``adapter_names``, per-row stop strings and token limits
end rows on their own terms, and the responses count only real tokens.

Causal rows that start with the same tokens (a program's instructions and demos) share
one computation of that prefix: its KV cache is computed once per adapter in the batch
and copied to every row, and the rows are laid out ``prefix + padding + rest`` so that
every real token keeps its position. This halves a CPU batch of ChatFormat prompts.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from apprentice.lm.base import Response, Usage

# Typed by the base Engine: importing LocalEngine would make a cycle (it imports this).
from apprentice.lm.engine import BASE, Engine, Job

__all__ = ["Sampling", "generate_batch"]

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 8  # tokens; below this a separate prefix forward is not worth it
STATIC_CACHE_BYTES = 1 << 30  # larger KV caches grow as generated (dynamic), not preallocated


@dataclass(frozen=True)
class Sampling:
    """Generation settings that must be equal for requests to share a generate call."""

    do_sample: bool
    temperature: float | None
    top_p: float | None
    seed: int | None


def generate_batch(engine: Engine, jobs: list[Job]) -> list[Response]:
    """Answers ``jobs`` (same sampling settings) with one generate call; a request with
    ``n`` completions takes ``n`` rows. Nothing of the call stays behind: its KV cache is
    made for it, and a seed sets the random state only for its duration."""
    import torch

    rows = [job for job in jobs for _ in range(job.n)]
    prompts = [job.prompt_ids for job in rows]
    names = [job.slot for job in rows]
    limits = [job.max_new_tokens for job in rows]
    options: dict[str, Any] = {
        "generation_config": _generation_config(engine, jobs[0].sampling, max(limits))
    }
    seed = jobs[0].sampling.seed
    with torch.inference_mode(), _adapter_choice(engine, names, options), _seeded(engine, seed):
        shared, cache = _shared_prefix(engine, prompts, names, max(limits))
        if cache is None:
            cache = _new_cache(engine, len(rows), max(map(len, prompts)) + max(limits))
        if cache is not None:
            options[_cache_argument(engine)] = cache
        input_ids, mask = _pad(engine, prompts, shared)
        # T5's output opens with decoder_start; a causal output repeats the prompt.
        start = input_ids.shape[1] if engine.kind == "causal" else 1
        stops = _RowStops(engine, start, limits, [job.stop for job in rows], rows)
        if stops.needed:
            options["stopping_criteria"] = [stops]
        output = engine.network.generate(input_ids=input_ids, attention_mask=mask, **options)
    return _responses(engine, jobs, output[:, start:].tolist(), stops.stopped_at)


def _seeded(engine: Engine, seed: int | None):
    """Seeds the generator for this call only; the state before it comes back after, so a
    seeded request leaves nothing for the next ones to inherit."""
    import torch

    if seed is None:
        return contextlib.nullcontext()
    device = torch.device(engine.device)
    devices = [device.index or 0] if device.type == "cuda" else []

    @contextlib.contextmanager
    def fork():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return fork()


def _new_cache(engine: Engine, rows: int, length: int):
    """A KV cache for one causal CPU call, sized to that call: static (preallocated) when it
    fits ``STATIC_CACHE_BYTES``, else None and generate grows a dynamic one. The default
    dynamic cache concatenates the whole cache at every step, which costs a batched CPU
    generate ~25% of its time; a static one made by generate itself would be kept on the
    model at the largest size ever asked for, and every later call would allocate that."""
    from transformers import StaticCache

    if engine.kind != "causal" or engine.device != "cpu":
        return None
    per_position = _kv_bytes_per_position(engine)
    if per_position is None or rows * length * per_position > STATIC_CACHE_BYTES:
        return None
    return StaticCache(config=engine.network.config, max_cache_len=length)


def _kv_bytes_per_position(engine: Engine) -> int | None:
    config = engine.network.config.get_text_config(decoder=True)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and heads:
        head_dim = getattr(config, "hidden_size", 0) // heads
    if not (layers and kv_heads and head_dim):
        return None
    return 2 * layers * kv_heads * head_dim * engine.network.dtype.itemsize


def _pad(engine: Engine, prompts: list[list[int]], shared: int):
    """Causal rows as ``shared prefix + left padding + rest``; T5 rows padded on the right."""
    import torch

    width = max(map(len, prompts))
    ids, mask = [], []
    for prompt in prompts:
        gap = width - len(prompt)
        if engine.kind == "causal":
            ids.append(prompt[:shared] + [engine.pad_id] * gap + prompt[shared:])
            mask.append([1] * shared + [0] * gap + [1] * (len(prompt) - shared))
        else:
            ids.append(prompt + [engine.pad_id] * gap)
            mask.append([1] * len(prompt) + [0] * gap)
    return torch.tensor(ids, device=engine.device), torch.tensor(mask, device=engine.device)


def _adapter_choice(engine: Engine, names: list[str], options: dict[str, Any]):
    """Per-row adapters for a mixed batch; for a batch on one adapter (or none), peft's
    plain path, which skips the per-row gather and scatter in every LoRA layer."""
    if not engine.has_adapters:
        return contextlib.nullcontext()
    if len(set(names)) > 1:
        options["adapter_names"] = names
        return contextlib.nullcontext()
    if names[0] == BASE:
        return engine.network.disable_adapter()
    engine.network.set_adapter(names[0])
    return contextlib.nullcontext()


def _generation_config(engine: Engine, sampling: Sampling, max_new_tokens: int):
    config = copy.deepcopy(engine.network.generation_config)
    config.update(
        do_sample=sampling.do_sample,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=config.top_k if sampling.do_sample else None,
        max_new_tokens=max_new_tokens,
        max_length=None,
        min_new_tokens=None,
        num_beams=1,
        num_return_sequences=1,
        pad_token_id=engine.pad_id,
        eos_token_id=sorted(engine.eos_ids),
        disable_compile=True,  # batch shapes vary: compiling each would cost more than it saves
    )
    config.cache_implementation = None  # the cache is made per call (_new_cache)
    return config


def _shared_prefix(engine: Engine, prompts, names, max_new_tokens: int):
    """(length, KV cache) of the prefix every causal row shares, or (0, None)."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if engine.kind != "causal" or len(prompts) < 2 or not engine.share_prefix:
        return 0, None
    # Every row keeps at least one token of its own: generation starts from its logits.
    shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    if shared < MIN_SHARED_PREFIX:
        return 0, None
    groups = sorted(set(names))  # one prefix computation per adapter
    forward: dict[str, Any] = {"adapter_names": groups} if len(groups) > 1 else {}
    if _accepts(engine.network, "logits_to_keep"):
        forward["logits_to_keep"] = 1
    config = engine.network.config
    prefix = DynamicCache(config=config)  # sliding-window layers show up as such below
    ids = torch.tensor([prompts[0][:shared]] * len(groups), device=engine.device)
    forward[_cache_argument(engine)] = prefix
    engine.network(input_ids=ids, use_cache=True, **forward)
    if not prefix.layers or any(type(layer) is not DynamicLayer for layer in prefix.layers):
        engine.share_prefix = False  # sliding windows, recurrent state, ...: not a plain KV cache
        log.info(
            "%r: the model's cache is not a plain KV cache; prompt prefixes are not shared", engine
        )
        return 0, None
    length = max(map(len, prompts)) + max_new_tokens
    cache = _new_cache(engine, len(prompts), length) or DynamicCache(config=config)
    rows = torch.tensor([groups.index(name) for name in names], device=engine.device)
    for index, layer in enumerate(prefix.layers):
        cache.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), index)
    engine.stats.prefix_tokens_saved += shared * (len(names) - len(groups))
    return shared, cache


def _cache_argument(engine: Engine) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns)."""
    return "cache" if _accepts(engine.network, "cache") else "past_key_values"


def _accepts(model: Any, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


class _RowStops:
    """A stopping criterion with per-row stop strings, token limits and cancel events, so
    the rows of different requests end on their own terms inside one generate call."""

    def __init__(self, engine: Engine, start: int, limits, stops, rows: list[Job]):
        self.engine = engine
        self.start = start
        self.limits = limits
        self.stops = stops
        self.cancels = [job.cancel for job in rows]
        # A stop string of L characters spans at most ~4L byte-level tokens.
        self.windows = [4 * max(map(len, s)) + 4 if s else 0 for s in stops]
        self.stopped_at: list[int | None] = [None] * len(stops)
        self.needed = any(stops) or len(set(limits)) > 1 or any(self.cancels)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        step = input_ids.shape[1] - self.start
        tails = input_ids[:, -max(max(self.windows), 1) :].tolist()
        done = []
        for i, tail in enumerate(tails):
            cancel = self.cancels[i]
            if self.stopped_at[i] is None and cancel is not None and cancel.is_set():
                self.stopped_at[i] = step
            if self.stopped_at[i] is None and self.stops[i]:
                window = tail[-min(self.windows[i], step) :]
                text = self.engine.decode(window)
                if _first_stop(text, self.stops[i]) is not None:
                    self.stopped_at[i] = step
            done.append(self.stopped_at[i] is not None or step >= self.limits[i])
        return torch.tensor(done, device=input_ids.device)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _responses(engine: Engine, jobs: list[Job], generated, stopped_at) -> list[Response]:
    now = time.perf_counter()
    responses, row = [], 0
    for job in jobs:
        texts, reasons, completion_tokens = [], [], 0
        for _ in range(job.n):
            text, reason, count = _finish_row(engine, job, generated[row], stopped_at[row])
            texts.append(text)
            reasons.append(reason)
            completion_tokens += count
            row += 1
        responses.append(
            Response(
                texts=texts,
                usage=Usage(len(job.prompt_ids), completion_tokens),
                model=job.model or engine.base_model,
                finish_reasons=reasons,
                latency_s=now - job.submitted,
            )
        )
    return responses


def _finish_row(engine: Engine, job: Job, tokens: list[int], stopped_at: int | None):
    """The row's text, finish reason and generated-token count (padding excluded)."""
    tokens = tokens[: job.max_new_tokens]
    end = next((i for i, t in enumerate(tokens) if t in engine.eos_ids), None)
    if end is not None:
        count, content, reason = end + 1, tokens[:end], "stop"
    elif stopped_at is not None:
        count, content, reason = stopped_at, tokens[:stopped_at], "length"
    else:
        count, content, reason = len(tokens), tokens, "length"
    text = engine.decode(content)
    cut = _first_stop(text, job.stop)
    if cut is not None:
        text, reason = text[:cut], "stop"
    return text, reason, count
