"""How a student's base model is loaded: hub revision, dtype, attention kernel, 4-bit
quantization (QLoRA) and remote code.

``StudentLoading`` is the recipe's ``student:`` options that say how (not which) base is
loaded; the trainer, the local and vLLM engines and ``export --merged`` all take one and
turn it into the keyword arguments their loader wants, so one setting reaches every load.
It sits low (it imports only ``apprentice.config``, ``apprentice.files`` and
``apprentice.adapter``): the LM layer
and the trainer both use it.

Only the options that differ from the defaults enter hashes, manifests and saved LM
configs (``changed``), so a student loaded as before keeps the keys it had.

Serving loads the base as the student trained: ``trained_options`` reads what the adapters'
manifests (and a full finetune's or merged model's own files) recorded, and
``serving_loading`` takes each option from there unless the caller set it. The LM layer
(``LocalLM``, ``VLLMLM``) and ``apprentice serve`` all go through these two.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from apprentice.adapter import MERGED_STAMP, read_manifest
from apprentice.config import ConfigSection
from apprentice.files import looks_like_local_path

__all__ = [
    "QLORA_INSTALL",
    "StudentLoading",
    "check_4bit_runs",
    "serving_loading",
    "trained_options",
    "why_no_4bit",
]

log = logging.getLogger(__name__)

QLORA_INSTALL = "pip install 'apprentice[qlora]' (bitsandbytes)"


class StudentLoading(ConfigSection):
    """The options of ``from_pretrained`` a recipe's ``student:`` section sets."""

    revision: str | None = Field(
        None,
        description="hub branch, tag or commit of student.model (a commit pins it exactly); "
        "part of the student's identity: another revision is another student. Hub names only",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the base is loaded in for training (and export --merged); auto = "
        "the checkpoint's own. Serving loads it in this dtype too, unless serve.dtype names one",
    )
    attn_implementation: str | None = Field(
        None,
        description="attention kernel passed to from_pretrained: eager, sdpa, "
        "flash_attention_2, ...; None = transformers' default. vLLM picks its own",
    )
    load_in_4bit: bool = Field(
        False,
        description="QLoRA: load the base in 4-bit NF4 (bitsandbytes) and train a LoRA "
        "adapter on it; needs a CUDA GPU and bitsandbytes. Untested on a GPU",
    )
    trust_remote_code: bool = Field(
        False,
        description="run the model repository's own Python code (AutoConfig, AutoTokenizer, "
        "AutoModel, vLLM); only for repositories you trust",
    )

    def changed(self) -> dict[str, Any]:
        """The options set to other than their defaults (what hashes and manifests record)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def hub_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoConfig`` / ``AutoTokenizer.from_pretrained``."""
        options: dict[str, Any] = {}
        if self.revision is not None:
            options["revision"] = self.revision
        if self.trust_remote_code:
            options["trust_remote_code"] = True
        return options

    def local_copy(self) -> StudentLoading:
        """The options for a folder made from this student (a full finetune, a merged
        export): the same, without the hub revision."""
        return self.model_copy(update={"revision": None})

    def model_options(
        self, *, dtype: Any = None, quantize: bool = True, device: str | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``AutoModel*.from_pretrained``: ``dtype`` overrides this
        config's (serving passes ``serve.dtype``); with ``load_in_4bit`` and ``quantize``, a
        ``BitsAndBytesConfig`` (NF4, double quantization, computing in bf16 unless the dtype
        says float16 or float32) and the whole model on ``device`` (default: this process's
        GPU, ``LOCAL_RANK`` under accelerate)."""
        import torch

        options = self.hub_options()
        wanted = self.dtype if dtype is None else dtype
        if isinstance(wanted, str) and wanted != "auto":
            wanted = getattr(torch, wanted)
        options["dtype"] = wanted
        if self.attn_implementation is not None:
            options["attn_implementation"] = self.attn_implementation
        if self.load_in_4bit and quantize:
            from transformers import BitsAndBytesConfig

            compute = wanted if wanted in (torch.float16, torch.float32) else torch.bfloat16
            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
            options["device_map"] = {"": device or f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"}
        return options

    def serving_dtype(self, dtype: Any) -> Any:
        """The dtype to serve in: ``dtype`` when it names one (not None or "auto"), else the
        one the student trained in (this config's, unless auto), else ``dtype`` as it is."""
        if dtype is not None and dtype != "auto":
            return dtype
        return self.dtype if self.dtype != "auto" else dtype

    def check(self, student: str, *, here: bool = True) -> None:
        """Refuses options that cannot apply to ``student`` (a path, hub name or ``.gguf``),
        before anything is loaded: a revision of a local folder or GGUF file, remote code
        for a GGUF file (converted into a plain Llama-family checkpoint), and, with
        ``here``, 4-bit where this machine cannot run it."""
        name = str(student)
        gguf = name.lower().endswith(".gguf")
        if self.revision is not None and (gguf or looks_like_local_path(name)):
            what = "a GGUF file" if gguf else "a local path"
            raise ValueError(
                f"student.revision {self.revision!r} pins a Hugging Face Hub revision, and "
                f"student {name!r} is {what}, which has no revisions: drop student.revision, "
                "or name the model by its hub id"
            )
        if self.trust_remote_code and gguf:
            raise ValueError(
                f"student.trust_remote_code is set, and student {name!r} is a GGUF file, "
                "converted into a plain checkpoint with no code of its own: drop "
                "student.trust_remote_code"
            )
        if self.load_in_4bit and here:
            check_4bit_runs()


def check_4bit_runs() -> None:
    """Refuses ``load_in_4bit`` where bitsandbytes' 4-bit layers cannot run: without a CUDA
    GPU, or without bitsandbytes installed."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "student.load_in_4bit (QLoRA) needs a CUDA GPU for bitsandbytes' 4-bit layers, "
            "and none is visible here: set student.load_in_4bit: false (and student.dtype "
            "if memory is tight), or run on a CUDA machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"student.load_in_4bit (QLoRA) needs bitsandbytes, which is not installed: "
            f"{QLORA_INSTALL}, or set student.load_in_4bit: false"
        )


def why_no_4bit(device: str | None = None) -> str | None:
    """Why bitsandbytes' 4-bit layers cannot run here, on ``device`` (None: this process's
    GPU); None when they can."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return f"bitsandbytes' 4-bit layers need a CUDA GPU, and the device is {device!r}"
    if not torch.cuda.is_available():
        return "bitsandbytes' 4-bit layers need a CUDA GPU, and none is visible here"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"bitsandbytes is not installed: {QLORA_INSTALL}"
    return None


# -- serving a base as its student trained ------------------------------------------------------
def trained_options(
    base_model: str | os.PathLike, adapters: Mapping[str, str | os.PathLike] | None = None
) -> dict[str, dict[str, Any]]:
    """How the base was loaded to train what is served on it, as apprentice's files recorded
    it: ``{label: base_model_options}`` for each adapter folder with a manifest, and for
    ``base_model`` itself when it is a full finetune's folder (its manifest) or an ``export
    --merged`` one (its ``apprentice_merged.json``): those without the hub revision (a
    folder has none) and unquantized (they hold whole weights). Folders without those files
    (a plain PEFT folder, a hub name) add nothing."""
    found: dict[str, dict[str, Any]] = {}
    base = Path(str(base_model)).expanduser()
    if (base / "manifest.json").is_file():
        manifest = _manifest_or_none(base)
        if manifest is not None and manifest.method == "full":
            found[f"full finetune {manifest.name!r}"] = _folder_options(manifest.base_model_options)
    elif (base / MERGED_STAMP).is_file():
        stamp = json.loads((base / MERGED_STAMP).read_text())
        found[f"merged model {base.name!r}"] = _folder_options(stamp.get("base_model_options"))
    for name, path in (adapters or {}).items():
        folder = Path(path).expanduser()
        manifest = _manifest_or_none(folder) if (folder / "manifest.json").is_file() else None
        if manifest is not None and manifest.method == "lora":
            found[f"adapter {name!r}"] = dict(manifest.base_model_options)
    return found


def _manifest_or_none(folder: Path):
    try:
        return read_manifest(folder)
    except (ValueError, TypeError):  # not an apprentice manifest: it records nothing
        return None


def _folder_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if k not in ("revision", "load_in_4bit")}


def serving_loading(
    given: StudentLoading | Mapping[str, Any] | None,
    trained: Mapping[str, Mapping[str, Any]],
    base_model: str | os.PathLike,
    *,
    why_no_4bit: Callable[[], str | None] | None = None,
) -> StudentLoading:
    """How to load ``base_model`` to serve what trained on it: each option as ``given`` set
    it (the fields it was made with: an explicit option wins), else as ``trained``
    (``trained_options``) recorded it, else the default. Every option is set in the result.

    What the trained options ask is checked here, in one line each: remote code is never
    taken from a file (the caller must set ``trust_remote_code``); a hub revision of a base
    served from a local folder is dropped (the folder has none); 4-bit where this backend
    cannot load it (``why_no_4bit`` says why) is served unquantized, with a warning. Asked
    for explicitly, 4-bit that cannot load fails instead."""
    if not isinstance(given, StudentLoading):
        given = StudentLoading.model_validate(dict(given or {}))
    recorded = {label: _recorded(label, options) for label, options in trained.items()}
    values = {}
    for field, info in StudentLoading.model_fields.items():
        if field in given.model_fields_set:
            values[field] = getattr(given, field)
            continue
        seen = {label: getattr(loading, field) for label, loading in recorded.items()}
        if len(set(seen.values())) > 1:
            said = ", ".join(f"{label} with {field}={value!r}" for label, value in seen.items())
            raise ValueError(
                f"{said} trained on {str(base_model)!r}: one engine loads its base one way; "
                f"serve them apart, or set {field} to load it one way"
            )
        values[field] = next(iter(seen.values())) if seen else info.default
    who = ", ".join(recorded) or "the student"
    if values["trust_remote_code"] and "trust_remote_code" not in given.model_fields_set:
        raise PermissionError(
            f"{who} trained with trust_remote_code: loading {str(base_model)!r} runs the Python "
            "code in its files, which is never taken from a file alone; if you trust it, set "
            "trust_remote_code (apprentice serve --trust-remote-code, or "
            "loading={'trust_remote_code': True})"
        )
    local = looks_like_local_path(str(base_model)) or Path(str(base_model)).expanduser().exists()
    if values["revision"] is not None and "revision" not in given.model_fields_set and local:
        log.warning(
            "%s trained on revision %s of a hub model; %s is a local folder, which has no "
            "revisions: it is loaded as it is (make sure it holds that revision)",
            who,
            values["revision"],
            base_model,
        )
        values["revision"] = None
    if values["load_in_4bit"] and why_no_4bit is not None:
        reason = why_no_4bit()
        if reason is not None and "load_in_4bit" in given.model_fields_set:
            raise ValueError(
                f"load_in_4bit is set, and {str(base_model)!r} cannot load in 4-bit here: "
                f"{reason}; unset load_in_4bit (apprentice serve --no-load-in-4bit)"
            )
        if reason is not None:
            log.warning(
                "%s trained on a 4-bit base (load_in_4bit), which cannot load here: %s; "
                "serving the unquantized base instead (answers may differ slightly)",
                who,
                reason,
            )
            values["load_in_4bit"] = False
    return StudentLoading(**values)


def _recorded(label: str, options: Mapping[str, Any]) -> StudentLoading:
    try:
        return StudentLoading.model_validate(dict(options))
    except ValidationError as exc:
        raise ValueError(
            f"{label} records base_model_options {dict(options)!r} that apprentice cannot "
            f"read: {exc.errors()[0]['msg']}"
        ) from None
