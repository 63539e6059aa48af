"""`apprentice serve --backend vllm` hands vLLM's own multi-GPU flags to `vllm serve`."""

from __future__ import annotations

import argparse

import pytest

from apprentice.serve.cli import add_serve_arguments
from apprentice.serve.vllm_backend import _parallel_args


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(["runs/x", *argv])


def test_parallel_sizes_above_one_become_vllm_serve_flags():
    assert _parallel_args(_args()) == []
    assert _parallel_args(
        _args("--tensor-parallel-size", "4", "--pipeline-parallel-size", "2")
    ) == [
        "--tensor-parallel-size",
        "4",
        "--pipeline-parallel-size",
        "2",
    ]
    with pytest.raises(ValueError, match="--tensor-parallel-size must be >= 1, got 0"):
        _parallel_args(_args("--tensor-parallel-size", "0"))
