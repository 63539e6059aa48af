"""``apprentice serve``: serve a run directory, an adapter or a model with the local backend
(our server) or the vllm backend (a supervised ``vllm serve``, ``serve.vllm_backend``; vLLM's
CUDA build or its CPU build), until interrupted.

The vLLM-named options match ``vllm serve``, so ``python -m apprentice.serve`` takes
the command line a supervisor gives ``vllm serve`` (see ``serve.vllm_server``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

__all__ = ["add_serve_arguments", "local_server", "main", "run_serve"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``apprentice serve`` (also ``python -m apprentice.serve``); the
    vLLM-named ones match ``vllm serve``, so a supervisor drives either with one command line."""
    parser.add_argument(
        "target",
        metavar="RUN_DIR|ADAPTER_DIR|MODEL",
        help="a run directory (adapters/<name>/...), one adapter directory, a full finetune, "
        "or a base model directory / hub name",
    )
    parser.add_argument("--backend", choices=("local", "vllm"), default="local")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the server: set a key")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,
        help="required as 'Authorization: Bearer KEY'; default $VLLM_API_KEY",
    )
    parser.add_argument(
        "--adapter-root",
        default=None,
        help="directory that /v1/load_lora_adapter may load from (default: RUN_DIR; with "
        "another target, runtime loading is off)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the base model's id (default: the run's name for a full finetune, else the "
        "base model's hub or directory name)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="local: default max_tokens")
    parser.add_argument("--device", default=None, help="local: cpu, cuda, ... (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights and activations; auto: the dtype the adapters trained in, else float32 "
        "on a CPU and on vLLM's CPU build, bfloat16 (local) or vLLM's choice on a GPU",
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="hub revision of the base (default: the one its adapters trained on)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="run the base model repository's own code (an adapter's manifest asking for it "
        "is refused without this flag)",
    )
    parser.add_argument(
        "--attn-implementation",
        default=None,
        help="local: attention kernel (eager, sdpa, ...; default: the one its adapters trained "
        "with); vLLM picks its own",
    )
    parser.add_argument(
        "--load-in-4bit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load the base in 4-bit (bitsandbytes, CUDA; default: as its adapters trained)",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="vllm: KV cache memory in GiB (RAM on vLLM's CPU build, 1 there unless given; "
        "on a GPU vLLM sizes it from its --gpu-memory-utilization)",
    )
    parser.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=None,
        help="vllm: the same in bytes (vllm serve's flag)",
    )
    parser.add_argument("--enable-lora", action="store_true", help="as vllm serve (always on)")
    parser.add_argument("--max-lora-rank", type=int, default=None, help="vllm: largest LoRA rank")
    parser.add_argument("--max-loras", type=int, default=None, help="vllm: adapters per batch")
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="vllm: GPUs each layer is split over"
    )
    parser.add_argument(
        "--pipeline-parallel-size", type=int, default=1, help="vllm: GPUs the layers are split over"
    )
    parser.add_argument("--log-file", default=None, help="vllm: the server's log file")


def run_serve(args: argparse.Namespace) -> int:
    """Serves until interrupted; returns the exit status (2: nothing servable)."""
    from apprentice.serve.servable import find_servable

    try:
        servable = find_servable(args.target)
    except (FileNotFoundError, ValueError) as exc:
        print(f"apprentice serve: {exc}", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    adapter_root = args.adapter_root or servable.run_dir
    if args.backend == "vllm":
        from apprentice.serve.vllm_backend import run_vllm_backend

        return run_vllm_backend(args, servable, api_key)
    _exit_on_sigterm()
    try:
        server = local_server(args, servable, api_key, adapter_root)
    except (OSError, ValueError) as exc:
        print(f"apprentice serve: {exc}", file=sys.stderr)
        return 2
    lm = server.lm
    print(
        f"apprentice serve: {server.base_url} serves {server.model_name!r} with adapters "
        f"{lm.adapter_names()} ({lm.engine.kind}, {lm.engine.device})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def local_server(args: argparse.Namespace, servable, api_key: str | None, adapter_root):
    """The local backend's Server for ``args`` (bound, not yet serving)."""
    from apprentice.lm.local import LocalLM
    from apprentice.serve.servable import given_loading
    from apprentice.serve.server import Server

    lm = LocalLM(
        servable.base_model,
        adapters=servable.adapters,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        loading=given_loading(args),  # the rest as the adapters trained
    )
    return Server(
        lm,
        host=args.host,
        port=args.port,
        api_key=api_key,
        adapter_root=adapter_root,
        model_name=args.served_model_name or servable.name,
    )


def _exit_on_sigterm() -> None:
    """SIGTERM (what a supervisor sends) ends ``serve_forever`` as Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    """``python -m apprentice.serve ...`` (the CLI proper calls ``run_serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m apprentice.serve", description=__doc__.split("\n\n")[0]
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
