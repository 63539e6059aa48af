"""Binding LMs and adapters to a program's predictors, and hot-swapping them while it serves.

``bind(program, lm, adapter="triage")`` binds every predictor (or the ``predictors=``
paths) to ``lm`` answering with adapter ``triage``; ``swap_adapter(program, "triage-v2")``
rebinds each predictor's current LM to another adapter on the same backend. A swap is
one attribute assignment per predictor: a call already running finishes on the old
adapter, every call that starts afterwards uses the new one.

The cache never serves a stale answer across a swap, because the LM's identity (part of
every cache key) carries the adapter's name *and* content hash:

- ``LocalLM`` / ``VLLMLM``: the hash is read from the engine's adapter table at each call,
  so even an adapter re-loaded under the same name with other weights changes the key.
- ``OpenAILM`` against a server: the view asks for the adapter by name, and its hash is
  fetched from the server's ``/v1/models`` when bound (our server publishes
  ``adapter_hash``; for vLLM, a ``root`` path on this machine is hashed). Limit: if the
  server re-loads the same name with other weights *after* binding, call ``swap_adapter``
  (or ``bind``) again to fetch the new hash; until then the old key is used.

A saved program keeps all of this: each predictor's LM config records its backend, base
model, adapter and (for OpenAILM) the adapter hash.
"""

from __future__ import annotations

import collections
import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.lm.base import BaseLM
    from apprentice.module import Module
    from apprentice.predict.predict import Predict

__all__ = ["bind", "served_adapters", "swap_adapter", "with_adapter"]

log = logging.getLogger(__name__)

_AS_IS = object()


def bind(
    target: Module,
    lm: BaseLM,
    *,
    adapter: Any = _AS_IS,
    predictors: Iterable[str] | None = None,
    adapter_hash: str | None = None,
) -> dict[str, BaseLM]:
    """Binds ``lm`` (or its view answering with ``adapter``; None: the base model) to the
    predictors of ``target`` (a program or one predictor); returns path -> bound LM."""
    bound = lm if adapter is _AS_IS else with_adapter(lm, adapter, adapter_hash=adapter_hash)
    chosen = _select(target, predictors)
    for predictor in chosen.values():
        predictor.lm = bound
    return {path: bound for path in chosen}


def swap_adapter(
    target: Module,
    adapter: str | None,
    *,
    predictors: Iterable[str] | None = None,
    adapter_hash: str | None = None,
) -> dict[str, BaseLM]:
    """Rebinds each chosen predictor's LM to ``adapter`` on the same backend and base
    model (predictors sharing an LM keep sharing one); returns path -> bound LM."""
    chosen = _select(target, predictors)
    unbound = [path for path, p in chosen.items() if p.lm is None]
    if unbound:
        raise ValueError(
            f"predictors {unbound} have no LM of their own to swap the adapter of; "
            "bind(program, lm, adapter=...) first"
        )
    views: dict[int, BaseLM] = {}
    for predictor in chosen.values():
        key = id(predictor.lm)
        if key not in views:
            views[key] = with_adapter(predictor.lm, adapter, adapter_hash=adapter_hash)
    # Views are all built before any predictor changes: a failure swaps nothing.
    for predictor in chosen.values():
        predictor.lm = views[id(predictor.lm)]
    return {path: p.lm for path, p in chosen.items()}


def with_adapter(lm: BaseLM, adapter: str | None, *, adapter_hash: str | None = None) -> BaseLM:
    """The LM of ``lm``'s backend and base model answering with ``adapter``.

    In-process backends (LocalLM, VLLMLM) give a view of their engine; the adapter must be
    loaded there. For OpenAILM the adapter must be served at ``lm.base_url``; its hash is
    ``adapter_hash`` when given, else fetched from the server (see the module docstring).
    """
    from apprentice.lm.openai import OpenAILM

    if isinstance(lm, OpenAILM):
        if adapter is not None and adapter_hash is None:
            served = served_adapters(lm)
            if adapter not in served:
                raise ValueError(
                    f"{lm.base_url} does not serve adapter {adapter!r}; it serves "
                    f"{sorted(served)}: load it first (VLLMServer.load_adapter or POST "
                    "/v1/load_lora_adapter)"
                )
            adapter_hash = served[adapter]
            if adapter_hash is None:
                log.warning(
                    "%s gives no content hash for adapter %r: cache keys follow its name only",
                    lm.base_url,
                    adapter,
                )
        return _openai_view(lm, adapter, adapter_hash)
    if callable(getattr(lm, "with_adapter", None)):
        return lm.with_adapter(adapter)
    raise TypeError(
        f"{type(lm).__name__} has no adapters to swap; bind a LocalLM, VLLMLM or an OpenAILM "
        f"pointed at a LoRA server, got {lm!r}"
    )


def served_adapters(lm: Any) -> dict[str, str | None]:
    """Adapter id -> content hash (None when unknown) served at an OpenAILM's base_url,
    from ``GET /v1/models``: our server's ``adapter_hash``, else the hash of a ``root``
    directory that exists on this machine (a vLLM server started here)."""
    import httpx

    from apprentice.adapter import adapter_hash
    from apprentice.lm.base import LMError

    try:
        reply = httpx.get(lm.base_url + "/models", headers=lm._headers(), timeout=lm.timeout)
    except httpx.HTTPError as exc:
        raise LMError(f"cannot list the models of {lm.base_url}: {exc!r}") from None
    if reply.status_code != 200:
        raise LMError(f"{lm.base_url}/models answered HTTP {reply.status_code}: {reply.text[:300]}")
    adapters: dict[str, str | None] = {}
    for card in reply.json().get("data", []):
        if not card.get("parent"):  # the base model
            continue
        digest = card.get("adapter_hash")
        root = card.get("root")
        if digest is None and root and (Path(root) / "adapter_config.json").is_file():
            digest = adapter_hash(root)
        adapters[card["id"]] = digest
    return adapters


def _openai_view(lm: Any, adapter: str | None, adapter_hash: str | None) -> Any:
    """A copy asking for ``adapter``; it shares the connections, concurrency limit and
    cache of ``lm`` (one endpoint), and counts its own usage and history."""
    from apprentice.lm.usage import UsageTracker

    view = copy.copy(lm)  # BaseLM.__deepcopy__ shares; a shallow copy is what is wanted
    view.adapter = adapter
    view.adapter_hash = adapter_hash
    view.usage = UsageTracker(lm.usage.price)
    view.history = collections.deque(maxlen=lm.history.maxlen)
    return view


def _select(target: Module, predictors: Iterable[str] | None) -> dict[str, Predict]:
    from apprentice.module import Module

    if not isinstance(target, Module):
        raise TypeError(f"bind a program or a predictor (a Module), got {target!r:.200}")
    found = dict(target.named_predictors())
    if not found:
        raise ValueError(f"{type(target).__name__} has no predictors to bind")
    if predictors is None:
        return found
    wanted = [predictors] if isinstance(predictors, str) else list(predictors)
    unknown = [p for p in wanted if p not in found]
    if unknown:
        raise KeyError(f"no predictors {unknown} in {type(target).__name__}; it has {list(found)}")
    return {path: found[path] for path in wanted}
