"""How a student's base model is loaded: hub revision, dtype, attention kernel, 4-bit
quantization (QLoRA) and remote code.

``StudentLoading`` is the recipe's ``student:`` options that say how (not which) base is
loaded; the trainer, the local and vLLM engines and ``export --merged`` all take one and
turn it into the keyword arguments their loader wants, so one setting reaches every load.
It sits low (it imports only ``apprentice.config`` and ``apprentice.files``): the LM layer
and the trainer both use it.

Only the options that differ from the defaults enter hashes, manifests and saved LM
configs (``changed``), so a student loaded as before keeps the keys it had.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import Field

from apprentice.config import ConfigSection
from apprentice.files import looks_like_local_path

__all__ = ["QLORA_INSTALL", "StudentLoading", "check_4bit_runs"]

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
        "the checkpoint's own. Serving uses serve.dtype",
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
