"""``apprentice serve --backend vllm``: a supervised ``vllm serve`` (``VLLMServer``) on a private
loopback port, behind a ``Gateway`` on the public one.

vLLM would load any ``lora_path`` it is sent, so it never gets the public address: it
listens with a random key that only the gateway knows, and the gateway enforces
``--adapter-root``. The servable's adapters are loaded through the gateway's staging too,
so every adapter's reported hash is that of the bytes vLLM was given. ``--dtype`` and
``--kv-cache-gib`` reach vLLM (``VLLMServer``: float32 and 1 GiB of RAM on its CPU build),
and the base loads as its adapters trained (``vllm_server``);
requests naming the base model go through the zero adapter where the server has one.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apprentice.lm.base import LMRequestError

__all__ = ["run_vllm_backend", "start_vllm_backend", "vllm_server"]

GiB = 1 << 30


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_vllm_backend(args: Any, servable: Any, api_key: str | None) -> int:
    """Starts vLLM and its gateway with the servable's adapters loaded; serves until
    interrupted (SIGTERM too); the exit status."""
    problems = servable.vllm_problems()
    if problems:
        print("apprentice serve: " + "; ".join(problems), file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)
    server = gateway = None
    try:
        server, gateway = start_vllm_backend(args, servable, api_key)
        print(
            f"apprentice serve: {gateway.url}/v1 (vLLM behind a gateway, {server.dtype}, log "
            f"{server.log_path}) serves {server.model_ids()}",
            file=sys.stderr,
            flush=True,
        )
        return server.wait()
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError, RuntimeError, TimeoutError, LMRequestError) as exc:
        print(f"apprentice serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if gateway is not None:
            gateway.close()
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def _parallel_args(args: Any) -> list[str]:
    """vLLM's own multi-GPU serving: the flags ``vllm serve`` takes, when above 1."""
    found = []
    for name in ("tensor_parallel_size", "pipeline_parallel_size"):
        size = getattr(args, name, None)
        size = 1 if size is None else size
        if size < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {size}")
        if size > 1:
            found += [f"--{name.replace('_', '-')}", str(size)]
    return found


def kv_cache_gib(args: Any) -> float | None:
    """``--kv-cache-gib``, or vLLM's spelling ``--kv-cache-memory-bytes`` in GiB."""
    gib, size = getattr(args, "kv_cache_gib", None), getattr(args, "kv_cache_memory_bytes", None)
    if gib is not None and size is not None:
        raise ValueError(
            f"--kv-cache-gib {gib} and --kv-cache-memory-bytes {size} both size the KV cache; "
            "give one"
        )
    return size / GiB if size is not None else gib


def start_vllm_backend(
    args: Any,
    servable: Any,
    api_key: str | None,
    *,
    command: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
):
    """(the started VLLMServer, the started Gateway in front of it). ``command``: vLLM's
    (default: ``serve.vllm_launcher``), or a stand-in's."""
    import secrets

    from apprentice.serve.vllm_gateway import Gateway

    private_key = secrets.token_urlsafe(32)
    server = vllm_server(args, servable, private_key, command=command, extra_args=extra_args)
    server.start()
    gateway = None
    try:
        gateway = Gateway(
            server.url,
            upstream_key=private_key,
            host=args.host,
            port=args.port,
            api_key=api_key,
            adapter_root=args.adapter_root or servable.run_dir,
            base_model=server.model_name,
            base_adapter=server.base_adapter,
        )
        for name, folder in servable.adapters.items():
            status, reply = gateway.load_adapter(
                {"lora_name": name, "lora_path": str(folder)}, root=None
            )
            if status != 200:
                text = b"".join(reply.chunks).decode(errors="replace")
                raise RuntimeError(f"vLLM refused adapter {name!r}: HTTP {status}: {text}")
    except BaseException:
        if gateway is not None:
            gateway.close()
        server.stop()
        raise
    return server, gateway.start()


def vllm_server(
    args: Any,
    servable: Any,
    private_key: str | None,
    *,
    command: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
):
    """The ``VLLMServer`` (not started) for ``apprentice serve --backend vllm``: its base
    loaded as the adapters trained (``Servable.loading``: revision, dtype, remote code,
    4-bit where this vLLM can), each option unless the command line sets it."""
    from apprentice.adapter import smallest_lora_rank
    from apprentice.lm.vllm import vllm_4bit_problem
    from apprentice.serve.servable import given_loading
    from apprentice.serve.vllm_server import VLLMServer

    ranks = [m.lora_config.get("r", 0) for m in servable.manifests.values() if m.lora_config]
    rank = args.max_lora_rank or smallest_lora_rank(max([16, *ranks]))
    run_dir = servable.run_dir or Path.cwd()
    # vLLM's own limits on 4-bit; a stand-in command (the tests') has none
    problem = vllm_4bit_problem if command is None else None
    loading = servable.loading(given_loading(args), why_no_4bit=problem)
    return VLLMServer(
        servable.base_model,
        log_path=args.log_file or run_dir / "logs" / "vllm_server.log",
        max_lora_rank=rank,
        max_loras=args.max_loras or max(4, len(servable.adapters)),
        api_key=private_key,
        served_model_name=args.served_model_name or servable.name,
        dtype=getattr(args, "dtype", None) or "auto",
        kv_cache_gib=kv_cache_gib(args),
        loading=loading,
        command=command,
        extra_args=[*_parallel_args(args), *extra_args],
    )
