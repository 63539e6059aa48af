"""Rebuilding an LM from the JSON a saved program holds, and what such a file may ask for.

A saved program (``program.json``) may come from anywhere: a colleague, a download, a
pull request. Its LM settings decide where prompts go and which secret goes with them,
so loading one is refused when it would

- send requests to an endpoint the caller did not approve: an ``openai`` binding that
  names ``base_url`` or ``api_key_env`` loads only if ``allowed_endpoints`` maps that
  base URL to that environment variable (``{"http://127.0.0.1:8000/v1": "OPENAI_API_KEY"}``);
  a binding that names neither uses the caller's own defaults (``$OPENAI_BASE_URL``,
  ``$OPENAI_API_KEY``);
- fetch a model from the network: a ``local`` or ``vllm`` binding must name a model that
  is a file or folder on this machine, not a Hugging Face Hub name;
- write a file the caller did not choose: ``cache`` may be ``true`` (the caller's default
  cache) or ``false``, not a path;

unless the caller trusts the file (``trusted=True``), which restores every setting as
written. A file never carries a key itself: ``api_key`` in a saved config is refused even
from a trusted file. The run directory's own ``program.json`` is loaded as trusted: its
recipe already runs code of its choosing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["UntrustedLMError", "check_lm_config", "lm_from_config"]

# backend name -> (module, class); the class's keyword parameters are the config's keys.
_BACKENDS = {
    "openai": ("apprentice.lm.openai", "OpenAILM"),
    "local": ("apprentice.lm.local", "LocalLM"),
    "vllm": ("apprentice.lm.vllm", "VLLMLM"),
}


class UntrustedLMError(ValueError):
    """A saved LM setting that an untrusted file may not choose."""


def check_lm_config(
    config: Any,
    *,
    trusted: bool = False,
    allowed_endpoints: Mapping[str, str] | None = None,
    where: str = "saved LM",
) -> None:
    """Raises if ``lm_from_config`` would refuse ``config``; builds nothing, contacts nothing."""
    if not isinstance(config, dict):
        raise TypeError(
            f"{where}: an LM config is a dict with a 'backend' key, got {config!r:.200}"
        )
    backend = config.get("backend")
    if backend not in _BACKENDS:
        raise ValueError(
            f"{where}: saved LM has backend {backend!r}, which apprentice cannot rebuild; "
            f"known: {sorted(_BACKENDS)}"
        )
    if "api_key" in config:
        raise ValueError(
            f"{where}: the saved LM config holds an api_key; keys never belong in a program "
            "file: remove it, and name the environment variable that holds it in api_key_env"
        )
    if trusted:
        return
    loading = config.get("loading")
    if isinstance(loading, dict) and loading.get("trust_remote_code"):
        raise UntrustedLMError(
            f"{where}: lm.loading.trust_remote_code comes from the file: loading it would run "
            f"the model repository's own code for {config.get('model')!r}. Load the file with "
            "trusted=True if you trust it"
        )
    if backend == "openai":
        _check_endpoint(config, dict(allowed_endpoints or {}), where)
    else:
        _check_local_model(config.get("model"), where)
    cache = config.get("cache", False)
    if not isinstance(cache, bool) and cache is not None:
        raise UntrustedLMError(
            f"{where}: lm.cache {cache!r} names a file to write; a program file that is not "
            "trusted may only set cache to true (your default cache) or false. Load it with "
            "trusted=True if you trust it"
        )


def _check_endpoint(config: dict[str, Any], allowed: dict[str, str], where: str) -> None:
    from apprentice.lm.openai import resolve_base_url

    if "base_url" not in config and "api_key_env" not in config:
        return  # the caller's own defaults
    url = resolve_base_url(config.get("base_url"))
    env = config.get("api_key_env") or "OPENAI_API_KEY"
    approved = {resolve_base_url(u): e for u, e in allowed.items()}
    if approved.get(url) == env:
        return
    raise UntrustedLMError(
        f"{where}: lm.base_url {url!r} with lm.api_key_env {env!r} come from the file, and "
        f"this call did not approve that endpoint: loading it would send ${env} and your "
        "prompts there. If you trust the file, load it with trusted=True; to approve this "
        f"endpoint only, pass allowed_endpoints={{{url!r}: {env!r}}}"
    )


def _check_local_model(model: Any, where: str) -> None:
    if isinstance(model, str) and model and Path(model).expanduser().exists():
        return
    raise UntrustedLMError(
        f"{where}: lm.model {model!r} is not a file or folder on this machine; from a program "
        "file that is not trusted it would be downloaded from the Hugging Face Hub. Check "
        "the path, or load the file with trusted=True if you trust it"
    )


def lm_from_config(
    config: dict[str, Any],
    *,
    trusted: bool = False,
    allowed_endpoints: Mapping[str, str] | None = None,
    where: str = "saved LM",
):
    """The inverse of ``lm.to_config()``: ``{"backend": "openai", "model": ..., ...}``.

    ``config`` is treated as coming from a file the caller did not write unless
    ``trusted=True``; see the module docstring for what that refuses.
    """
    check_lm_config(config, trusted=trusted, allowed_endpoints=allowed_endpoints, where=where)
    backend = config["backend"]
    module, name = _BACKENDS[backend]
    cls = getattr(importlib.import_module(module), name)
    options = {k: v for k, v in config.items() if k != "backend"}
    if backend in ("local", "vllm"):  # their first parameter is the base model
        options["base_model"] = options.pop("model", None)
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{where}: saved LM config has unknown option(s) {unknown} for backend "
            f"{backend!r}; known: {sorted(known)}"
        )
    if isinstance(options.get("price"), dict):
        from apprentice.lm.usage import Price

        options["price"] = Price(**options["price"])
    return cls(**options)
