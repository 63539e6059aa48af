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

Each connection gets a thread (stdlib ``ThreadingHTTPServer``) that hands its request to
the shared ``LocalEngine``, whose batching thread gathers requests that arrive together
into one ``generate`` call: concurrency on the wire becomes batch size. The stdlib server
adds no dependency and is enough for a server whose every request costs a model forward;
there is no streaming.

Security: binds 127.0.0.1 unless told otherwise; with ``api_key`` every ``/v1`` route asks
for ``Authorization: Bearer KEY`` (``/health`` stays open, as in vLLM); runtime adapter
loading is on only with an ``adapter_root``, and a ``lora_path`` must resolve, symlinks
followed, inside it.

A completions ``prompt`` that is a flattened chat (``formats.messages_to_prompt``, what
``OpenAILM(model_type="text")`` sends) is turned back into its messages, so the student
sees the prompt it was trained on; any other prompt is taken as one user message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apprentice.serve.app import ServingApp
from apprentice.serve.protocol import HTTPError, error_body

if TYPE_CHECKING:
    from apprentice.lm.local import LocalLM

__all__ = ["MAX_BODY_BYTES", "Server"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: OpenAILM holds one connection per thread
    server_version = "apprentice"
    timeout = 300  # seconds an idle keep-alive connection is kept

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method == "POST" else b""
            status, payload = self.server.app.handle(
                method, urlsplit(self.path).path, self.headers, body
            )
        except HTTPError as exc:
            status, payload = exc.status, error_body(exc.status, exc.message, exc.param)
        except Exception as exc:
            log.exception("%s %s failed", method, self.path)
            message = f"internal error: {type(exc).__name__}: {exc}"
            status, payload = 500, error_body(500, message)
        self._send(status, payload)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise HTTPError(413, f"request body of {length} bytes is over {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, str):
            data, kind = payload.encode(), "text/plain; charset=utf-8"
        elif payload is None:
            data, kind = b"", "text/plain; charset=utf-8"
        else:
            data, kind = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left: nothing to tell it
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of clients connecting at once (a
    # program run over many threads) would see connections reset.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, app: ServingApp) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request, client_address) -> None:
        with self.connections_lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class Server:
    """``with Server(LocalLM(base, adapters={...})) as server: OpenAILM(base, base_url=server.base_url)``.

    The socket is bound at construction (``port=0``: a free port, see ``.port``), ``start()``
    serves from a background thread, ``serve_forever()`` from the calling one, ``close()``
    stops and drops open connections. ``model_name`` is the base model's id (default: the
    LM's model string). The LM's engine is shared, not owned: closing the server leaves it.
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
    ) -> None:
        from apprentice.lm.local import LocalLM

        if not isinstance(lm, LocalLM):
            raise TypeError(f"Server serves a LocalLM, got {type(lm).__name__}: {lm!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string, or None for no key")
        root = None
        if adapter_root is not None:
            root = Path(adapter_root).expanduser().resolve()
            if not root.is_dir():
                raise FileNotFoundError(f"adapter_root {str(adapter_root)!r} is not a directory")
        self.app = ServingApp(
            lm, model_name=model_name or lm.model, api_key=api_key, adapter_root=root
        )
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_class((host, port), self.app)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._lock = threading.Lock()

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


if (
    __name__ == "__main__"
):  # python -m apprentice.serve.server: the same options as apprentice serve
    from apprentice.serve.cli import main

    raise SystemExit(main())
