"""Helpers of the tests that serve a base as its adapters trained (``base_model_options``):
an adapter folder whose manifest records how its base loaded, and a hub name whose
``from_pretrained`` loads a local folder, so a pinned revision is tested offline and every
option the loaders get is recorded."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

REVISION = "0123456789abcdef0123456789abcdef01234567"  # a pinned hub commit
HUB_NAME = "tiny-org/tiny-student"
LOADERS = ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM")


def adapter_trained_with(
    source: Path,
    folder: Path,
    options: dict[str, Any],
    *,
    base_model: str = HUB_NAME,
    kind: str = "causal",
    name: str | None = None,
) -> Path:
    """A copy of the PEFT folder ``source`` at ``folder`` with a manifest saying adapter
    ``name`` (default: the folder's name) trained on ``base_model`` loaded with ``options``
    (``StudentLoading.changed()``)."""
    from apprentice.adapter import AdapterManifest, write_manifest

    shutil.copytree(source, folder)
    manifest = AdapterManifest(
        name=name or folder.name,
        kind=kind,
        method="lora",
        base_model=base_model,
        base_model_hash="",
        dataset_hash="",
        predictors=["answer"],
        train_config={},
        lora_config={"r": 8},
        metrics={},
        servable={"vllm": kind == "causal", "reasons": []},
        base_model_options=dict(options),
    )
    write_manifest(folder, manifest)
    return folder


def hub_alias(monkeypatch, folder: Path, name: str = HUB_NAME) -> dict[str, list[dict]]:
    """Makes transformers' loaders load hub name ``name`` from ``folder``; returns the
    keyword arguments of each of their calls for ``name``, by loader."""
    import transformers

    calls: dict[str, list[dict]] = defaultdict(list)
    for loader in LOADERS:
        cls = getattr(transformers, loader)
        real = cls.from_pretrained

        def from_pretrained(path, *args, _real=real, _loader=loader, **kwargs):
            if str(path) == name:
                calls[_loader].append(dict(kwargs))
                path = folder  # a local folder: transformers reads no revision for it
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    return calls
