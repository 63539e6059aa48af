"""An OpenAI-compatible HTTP server over the local backend (transformers + peft), CPU or GPU.

It speaks the part of vLLM's server protocol that apprentice uses, so one client
(``OpenAILM``) and one supervisor (``serve.vllm_server``) work with either server:

- ``GET /health``; ``GET /v1/models``: the base model and every loaded adapter as model
  ids (an adapter's card also carries its content ``adapter_hash``, an apprentice field);
- ``POST /v1/chat/completions``, ``POST /v1/completions``: ``model`` names the base model
  or an adapter; ``temperature``, ``top_p``, ``max_tokens``, ``n``, ``stop``, ``seed``;
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path", "load_inplace"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: vLLM's runtime LoRA endpoints, with
  its status codes and plain-text success replies.

Each connection gets a thread (stdlib ``ThreadingHTTPServer``, see ``serve.httpd``) that
hands its request to the shared ``LocalEngine``, whose batching thread gathers requests
that arrive together into one ``generate`` call: concurrency on the wire becomes batch
size. The stdlib server adds no dependency and is enough for a server whose every request
costs a model forward; there is no streaming. Connections are bounded (``max_connections``,
``idle_timeout``); a client that leaves cancels its request.

Security: binds 127.0.0.1 unless told otherwise (and warns when exposed without a key);
with ``api_key`` (printable ASCII) every ``/v1`` route asks for ``Authorization: Bearer
KEY`` (``/health`` stays open, as in vLLM); runtime adapter loading is on only with an
``adapter_root``: the adapter's directory and files must really lie inside it when they
are opened, and what is loaded and hashed is what was read then.

A completions ``prompt`` that is a flattened chat (``formats.messages_to_prompt``, what
``OpenAILM(model_type="text")`` sends) is turned back into its messages, so the student
sees the prompt it was trained on; any other prompt is taken as one user message.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from apprentice.serve.app import ServingApp
from apprentice.serve.httpd import (
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    HTTPServer,
    HTTPServer6,
)
from apprentice.serve.protocol import check_api_key, warn_if_exposed
from apprentice.serve.servable import model_id

if TYPE_CHECKING:
    from apprentice.lm.local import LocalLM

__all__ = ["MAX_BODY_BYTES", "Server", "check_api_key", "warn_if_exposed"]

log = logging.getLogger(__name__)


class Server:
    """``with Server(LocalLM(base, adapters={...})) as server: OpenAILM(base, base_url=server.base_url)``.

    The socket is bound at construction (``port=0``: a free port, see ``.port``), ``start()``
    serves from a background thread, ``serve_forever()`` from the calling one, ``close()``
    stops and drops open connections. ``model_name`` is the base model's id (default: its
    hub name or directory name, never a path). The LM's engine is shared, not owned: closing
    the server leaves it.
    """

    def __init__(
        self,
        lm: LocalLM,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        adapter_root: str | Path | None = None,
        model_name: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        from apprentice.lm.local import LocalLM

        if not isinstance(lm, LocalLM):
            raise TypeError(f"Server serves a LocalLM, got {type(lm).__name__}: {lm!r}")
        check_api_key(api_key)
        root = None
        if adapter_root is not None:
            root = Path(adapter_root).expanduser().resolve()
            if not root.is_dir():
                raise FileNotFoundError(f"adapter_root {str(adapter_root)!r} is not a directory")
        self.app = ServingApp(
            lm, model_name=model_name or model_id(lm.model), api_key=api_key, adapter_root=root
        )
        server_class = HTTPServer6 if ":" in host else HTTPServer
        self._httpd = server_class((host, port), self.app, max_connections, idle_timeout)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._lock = threading.Lock()
        warn_if_exposed(host, api_key)

    @property
    def lm(self) -> LocalLM:
        return self.app.lm

    @property
    def model_name(self) -> str:
        return self.app.model_name

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self._httpd.server_address[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What ``OpenAILM(base_url=...)`` takes."""
        return self.url + "/v1"

    def start(self) -> Server:
        with self._lock:
            if self._thread is None:
                self._serving = True
                self._thread = threading.Thread(
                    target=self._httpd.serve_forever,
                    kwargs={"poll_interval": 0.1},
                    name=f"apprentice-server:{self.port}",
                    daemon=True,
                )
                self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serves from this thread until ``KeyboardInterrupt`` (or ``close`` from another)."""
        with self._lock:
            self._serving = True
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            with self._lock:
                self._serving = False

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            serving, self._serving = self._serving, False
        if serving:
            self._httpd.shutdown()
        if thread is not None:
            thread.join()
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Server({self.url}, model={self.model_name!r})"
