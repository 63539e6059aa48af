"""Binding a trained student back into the program, on the backend its serve config names.

``bind_student(program, groups, adapter_dirs, base, serve)`` returns a copy of the program
whose predictors each answer with the base model plus their adapter, served by:

- ``local``: ``LocalLM`` (transformers + peft in this process);
- ``vllm``: ``VLLMLM`` (vLLM in this process);
- ``openai``: an ``OpenAILM`` asking a running server (``apprentice serve``, ``vllm serve
  --enable-lora``) for the adapter by name; the adapter is loaded there through
  ``POST /v1/load_lora_adapter`` when the server does not serve it yet.

On a server an adapter is loaded under a name that carries its content hash
(``triage-1a2b3c4d``): vLLM keys its prefix cache by adapter name, so new weights under an
old name could reuse key/value blocks computed with the old weights. A new name per
content makes that impossible, at the cost of one adapter slot per version. In process,
VLLMLM does the same with the names it hands to vLLM.

A full finetune ("adapter" folder holding whole weights) is served as its own base model.
``program.save()`` records each predictor's backend, so ``load()`` restores the binding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.adapter import smallest_lora_rank
from apprentice.serve.config import ServeConfig
from apprentice.student_loading import StudentLoading

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.formats.prompt import PromptTemplate
    from apprentice.lm.base import BaseLM
    from apprentice.module import Module

__all__ = ["bind_student", "student_lm", "template_options", "vllm_rank"]

log = logging.getLogger(__name__)


SHARED_LORA_RANK = 16  # vLLM's default max_lora_rank
SHARED_LORAS = 4  # vLLM-in-process adapters per batch, unless a program has more


def vllm_rank(ranks: list[int]) -> int:
    """The ``max_lora_rank`` an engine serving these adapter ranks starts with: 16, or the
    smallest vLLM accepts above it. Programs whose adapters fit share one engine per base
    model (a process runs one: ``lm.vllm.get_vllm_engine``)."""
    wanted = max([SHARED_LORA_RANK, *ranks])
    rank = smallest_lora_rank(wanted)  # vLLM's table lives in apprentice.adapter
    if rank is None:
        raise ValueError(f"LoRA rank {wanted} is above vLLM's largest max_lora_rank (512)")
    return rank


def student_lm(
    serve: ServeConfig,
    base: str,
    *,
    adapters: dict[str, str | Path] | None = None,
    adapter: str | None = None,
    max_new_tokens: int | None = None,
    max_lora_rank: int = 16,
    max_loras: int | None = None,
    loading: StudentLoading | None = None,
    **options: Any,
) -> BaseLM:
    """The LM serving ``base`` (with ``adapters`` loaded, answering with ``adapter``) on the
    backend ``serve`` names. ``options`` go to the LM's constructor as they are; ``loading``
    (the student's revision, attention, 4-bit, remote code) to the in-process backends,
    while a server loaded its base its own way."""
    new_tokens = max_new_tokens or serve.max_new_tokens
    if loading is not None and loading.changed() and serve.backend != "openai":
        options.setdefault("loading", loading)
    if serve.backend == "local":
        from apprentice.lm.local import LocalLM

        options.setdefault("device", serve.device)
        options.setdefault("dtype", serve.dtype)
        options.setdefault("max_batch_size", serve.max_batch_size)
        return LocalLM(
            base, adapters=adapters, adapter=adapter, max_new_tokens=new_tokens, **options
        )
    if serve.backend == "vllm":
        from apprentice.lm.vllm import VLLMLM

        options.setdefault("max_batch_size", serve.max_batch_size)
        options.setdefault("dtype", serve.dtype)
        options.setdefault("kv_cache_gib", serve.kv_cache_gib)
        options.setdefault("gpu_memory_utilization", serve.gpu_memory_utilization)
        options.setdefault("max_model_len", serve.max_model_len)
        options.setdefault("tensor_parallel_size", serve.tensor_parallel_size)
        options.setdefault("pipeline_parallel_size", serve.pipeline_parallel_size)
        return VLLMLM(
            base,
            adapters=adapters,
            adapter=adapter,
            max_new_tokens=new_tokens,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras or max(SHARED_LORAS, len(adapters or {})),
            **options,
        )
    return _server_lm(serve, base, adapters or {}, adapter, new_tokens, options)


def _server_lm(
    serve: ServeConfig,
    base: str,
    adapters: dict[str, str | Path],
    adapter: str | None,
    max_new_tokens: int,
    options: dict[str, Any],
) -> BaseLM:
    from apprentice.lm.openai import OpenAILM
    from apprentice.serve.swap import served_adapters, with_adapter

    key = os.environ.get(serve.api_key_env) if serve.api_key_env else None
    if serve.api_key_env and not key:
        raise ValueError(
            f"serve.api_key_env: environment variable {serve.api_key_env} is not set; export "
            "the server's API key there"
        )
    options.setdefault("cache", False)
    # Sent on every call: a server fills an omitted top_p from the model's generation_config
    # (0.9 for Llama-3.2), while the in-process backends sample with 1.0.
    options.setdefault("top_p", 1.0)
    lm = OpenAILM(
        serve.model or base,
        base_url=serve.base_url,
        api_key=key or "none",
        max_tokens=max_new_tokens,
        **options,
    )
    if adapters:
        served = served_adapters(lm)
        for name, path in adapters.items():
            if name not in served:
                _load_on_server(lm, name, Path(path))
    return with_adapter(lm, adapter) if adapter is not None else lm


def _load_on_server(lm: Any, name: str, path: Path) -> None:
    import httpx

    from apprentice.lm.base import LMError

    body = {"lora_name": name, "lora_path": str(path.resolve())}
    try:
        reply = httpx.post(
            lm.base_url + "/load_lora_adapter", json=body, headers=lm._headers(), timeout=300
        )
    except httpx.HTTPError as exc:
        raise LMError(f"cannot load adapter {name!r} into {lm.base_url}: {exc!r}") from None
    if reply.status_code != 200:
        raise LMError(
            f"{lm.base_url} refused to load adapter {name!r} from {path} (HTTP "
            f"{reply.status_code}: {reply.text[:300]}); the server must run with LoRA enabled "
            "and may only load from its adapter root (apprentice serve --adapter-root, or "
            "vllm serve --enable-lora with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
        )
    log.info("loaded adapter %s into %s", name, lm.base_url)


def bind_student(
    program: Module,
    groups: dict[str, list[str]],
    adapter_dirs: dict[str, Path],
    base: str,
    serve: ServeConfig,
    *,
    lm_options: dict[str, Any] | None = None,
    format: Format | None = None,
    template: PromptTemplate | None = None,
    loading: StudentLoading | None = None,
) -> Module:
    """A copy of ``program`` with each predictor bound to the student and the adapter trained
    for its group (``groups``: adapter name -> predictor paths; ``adapter_dirs``: adapter name
    -> its exported folder), and to ``format``, the prompt format the adapters were trained
    on (saved with the program, so a loaded program prompts the student the same way), and
    to ``template``, the chat template and variables they were trained with: in process the
    student LM renders with it; a server gets them in each request (``chat_template_kwargs``,
    and ``chat_template`` when it is not the model's own). ``loading``: how the base is
    loaded (``StudentLoading``; a full finetune's folder takes it without the revision)."""
    from apprentice.adapter import read_manifest
    from apprentice.serve.swap import with_adapter

    options = dict(lm_options or {})
    if template is not None:
        options.update(template_options(serve, template, options))
    manifests = {name: read_manifest(path) for name, path in adapter_dirs.items()}
    lora = {n: m for n, m in manifests.items() if m.method != "full"}
    # One engine for all of them: the same engine options for the name check and the binding.
    engine_options = {
        **options,
        "max_lora_rank": vllm_rank([int((m.lora_config or {}).get("r", 1)) for m in lora.values()]),
        "max_loras": max(SHARED_LORAS, len(lora)),
    }
    served = _served_names(serve, base, lora, engine_options, loading)
    shared = None
    if lora:
        adapters = {served[n]: adapter_dirs[n] for n in lora}
        shared = student_lm(serve, base, adapters=adapters, loading=loading, **engine_options)
    program = program.deepcopy()
    by_path = {path: name for name, group in groups.items() for path in group}
    unbound = [path for path, _ in program.named_predictors() if path not in by_path]
    if unbound:
        raise ValueError(
            f"no adapter group holds the predictor(s) {unbound} (groups: {groups}); the "
            "groups must come from adapter_groups() over this same program"
        )
    for path, predictor in program.named_predictors():
        name = by_path[path]
        predictor.format = format
        if name in lora:
            predictor.lm = with_adapter(shared, served[name])
        else:  # a full finetune: its folder is a base model of its own
            own = loading.local_copy() if loading is not None else None
            predictor.lm = student_lm(serve, str(adapter_dirs[name]), loading=own, **options)
    return program


def template_options(
    serve: ServeConfig, template: PromptTemplate, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The student LM's options that make it render prompts with ``template``."""
    options = options or {}
    if serve.backend != "openai":
        return {"template": template}
    extra = dict(options.get("extra_body") or {})
    if template.variables:
        extra["chat_template_kwargs"] = dict(template.variables)
    if template.chat_template is not None:
        extra["chat_template"] = template.chat_template
    return {"extra_body": extra} if extra else {}


def _served_names(
    serve: ServeConfig,
    base: str,
    manifests: dict[str, Any],
    options: dict[str, Any],
    loading: StudentLoading | None = None,
) -> dict[str, str]:
    """The name each adapter is served under: on a server always with its content hash (a
    plain ``vllm serve`` keeps no versions of its own); in process its own name, unless
    another adapter of that name is loaded on the same base already (both then stay
    served). VLLMLM versions the names it hands to vLLM itself (``apprentice.adapter``)."""
    if serve.backend == "openai":
        return {n: f"{n}-{m.adapter_hash[:8]}" for n, m in manifests.items()}
    engine = student_lm(serve, base, loading=loading, **options).engine if manifests else None
    names = {}
    for name, manifest in manifests.items():
        clash = name in engine.adapter_names() and engine.adapter_hash(name) != (
            manifest.adapter_hash
        )
        names[name] = f"{name}-{manifest.adapter_hash[:8]}" if clash else name
    return names
