"""Traces -> SFT dataset (build.py) and tokenized features with completion-only labels (tokenize.py)."""

from apprentice.dataset.build import DatasetManifest, build_dataset, load_dataset_dir
from apprentice.dataset.tokenize import IGNORE_INDEX, TokenizeReport, render_prompt, tokenize_rows

__all__ = [
    "IGNORE_INDEX",
    "DatasetManifest",
    "TokenizeReport",
    "build_dataset",
    "load_dataset_dir",
    "render_prompt",
    "tokenize_rows",
]
