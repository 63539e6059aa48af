"""Adapters on disk: what a run directory, an adapter directory or a model directory serves.

A run directory holds ``adapters/<name>/adapter/`` (what ``train_adapter`` exports; a PEFT
directory plus ``manifest.json``) or ``adapters/<name>/`` being that directory itself. The
manifest carries the base model, so ``find_servable(run_dir)`` knows what to load. A full
finetune (``manifest.method == "full"``) is a model directory of its own: it is served as
the base, with no adapters.

What a server calls a model (``Servable.name``, ``model_id``) is a name, never a path: the
run's name for a full finetune, the hub name or the directory's name for a base model.
Clients send it as ``model``; the server's file layout stays private.

The base loads as the adapters trained (``Servable.loading``): their manifests'
``base_model_options`` (revision, dtype, attention, 4-bit, remote code), each one unless
the command line sets it (``given_loading``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.adapter import AdapterManifest, read_manifest
from apprentice.files import looks_like_local_path
from apprentice.student_loading import StudentLoading, serving_loading, trained_options

__all__ = ["Servable", "find_servable", "given_loading", "model_id"]


@dataclass(frozen=True)
class Servable:
    """A base model and the LoRA adapters to serve on it (name -> PEFT directory)."""

    base_model: str
    kind: str | None  # "causal" | "seq2seq"; None when no manifest says
    adapters: dict[str, Path] = field(default_factory=dict)
    manifests: dict[str, AdapterManifest] = field(default_factory=dict)
    run_dir: Path | None = None  # the run directory, when one was given
    name: str = ""  # the base model's id on a server (see model_id); a full finetune: its run

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", model_id(self.base_model))

    def loading(
        self,
        given: StudentLoading | None = None,
        *,
        why_no_4bit: Callable[[], str | None] | None = None,
    ) -> StudentLoading:
        """How the base loads: as ``given`` sets it, else as the adapters (or the full
        finetune) trained (``student_loading.serving_loading``)."""
        trained = trained_options(self.base_model, self.adapters)
        return serving_loading(given, trained, self.base_model, why_no_4bit=why_no_4bit)

    def vllm_problems(self) -> list[str]:
        """Why vLLM could not serve this (empty when it can), from the manifests."""
        problems = []
        if self.kind == "seq2seq":
            problems.append(
                "vLLM does not serve encoder-decoder (T5) students; use --backend local"
            )
        for name, manifest in self.manifests.items():
            if manifest.method == "lora" and not manifest.servable.get("vllm", True):
                reasons = "; ".join(manifest.servable.get("reasons", []))
                problems.append(f"adapter {name!r} is not servable by vLLM: {reasons}")
        return problems


def model_id(model: str | os.PathLike) -> str:
    """The id a server gives a model: a hub name as it is, a local directory (or a
    ``.gguf`` file) by its name alone."""
    text = str(model)
    if looks_like_local_path(text):
        return Path(text).expanduser().resolve().name or text
    return text


def given_loading(args: Any) -> StudentLoading:
    """The loading options an ``apprentice serve`` command line sets (``--revision``,
    ``--attn-implementation``, ``--load-in-4bit`` / ``--no-load-in-4bit``,
    ``--trust-remote-code``): only those given, so the manifests fill in the rest."""
    names = ("revision", "attn_implementation", "load_in_4bit", "trust_remote_code")
    given = {name: getattr(args, name, None) for name in names}
    return StudentLoading(**{name: value for name, value in given.items() if value is not None})


def find_servable(path: str | os.PathLike) -> Servable:
    """What ``apprentice serve PATH`` serves: a run directory (``adapters/``), one adapter
    directory (``adapter_config.json``, with or without a manifest), a full finetune, or a
    plain model directory / hub name (the base alone)."""
    text = str(path)
    folder = Path(text).expanduser()
    if not folder.exists():
        if looks_like_local_path(text):
            raise FileNotFoundError(f"{text!r} does not exist")
        return Servable(base_model=text, kind=None)  # a hub name
    if not folder.is_dir():
        raise FileNotFoundError(f"{text!r} is a file; pass a run, adapter or model directory")
    folder = folder.resolve()
    if (folder / "adapters").is_dir():
        return _run_dir(folder)
    if (folder / "manifest.json").is_file() or (folder / "adapter_config.json").is_file():
        return _combine([_one(folder)], where=str(folder))
    if (folder / "config.json").is_file():
        return Servable(base_model=str(folder), kind=None)
    raise FileNotFoundError(
        f"{folder} is not a run directory (no adapters/), an adapter directory (no "
        "adapter_config.json) nor a model directory (no config.json)"
    )


def _run_dir(folder: Path) -> Servable:
    found = []
    for child in sorted((folder / "adapters").iterdir()):
        for candidate in (child / "adapter", child):
            if (candidate / "manifest.json").is_file():
                found.append(_one(candidate))
                break
    if not found:
        raise FileNotFoundError(
            f"{folder / 'adapters'} holds no trained adapter (no adapters/<name>/adapter/"
            "manifest.json): train one first (apprentice train)"
        )
    servable = _combine(found, where=str(folder))
    full = not servable.adapters  # a full finetune is served as the base, named after its run
    return Servable(
        servable.base_model,
        servable.kind,
        servable.adapters,
        servable.manifests,
        run_dir=folder,
        name=folder.name if full else servable.name,
    )


def _one(folder: Path) -> tuple[str, Path, AdapterManifest | None, str]:
    """(name, directory, manifest or None, base model) of one adapter or full finetune."""
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        base = str(folder) if manifest.method == "full" else manifest.base_model
        return manifest.name, folder, manifest, base
    config = json.loads((folder / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{folder}/adapter_config.json names no base_model_name_or_path and there is no "
            "manifest.json: cannot tell which model it adapts"
        )
    return folder.name, folder, None, str(base)


def _combine(found: list[tuple[str, Path, AdapterManifest | None, str]], where: str) -> Servable:
    full = [f for f in found if f[2] is not None and f[2].method == "full"]
    if full:
        if len(found) > 1:
            raise ValueError(
                f"{where} holds full finetunes {[f[0] for f in full]} among {len(found)} trained "
                "models; a full finetune is a model of its own: serve its directory alone"
            )
        name, folder, manifest, _ = full[0]
        return Servable(base_model=str(folder), kind=manifest.kind, name=name)
    bases = {base for *_, base in found}
    if len(bases) > 1:
        raise ValueError(
            f"the adapters in {where} adapt different base models {sorted(bases)}; one server "
            "serves one base: serve their directories one at a time"
        )
    adapters: dict[str, Path] = {}
    manifests: dict[str, AdapterManifest] = {}
    for name, folder, manifest, _ in found:
        if name in adapters:
            raise ValueError(
                f"two adapters in {where} are named {name!r}: {adapters[name]}, {folder}"
            )
        adapters[name] = folder
        if manifest is not None:
            manifests[name] = manifest
    kinds = {m.kind for m in manifests.values()}
    return Servable(
        base_model=bases.pop(),
        kind=kinds.pop() if len(kinds) == 1 else None,
        adapters=adapters,
        manifests=manifests,
    )
