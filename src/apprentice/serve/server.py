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
import ipaddress
import json
import logging
import queue
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apprentice.serve.app import ServingApp
from apprentice.serve.protocol import ClientGone, HTTPError, error_body
from apprentice.serve.registry import model_id

if TYPE_CHECKING:
    from apprentice.lm.local import LocalLM

__all__ = ["IDLE_TIMEOUT_S", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "Server"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20
MAX_CONNECTIONS = 512  # open connections (one thread each); more get a 503 at once
IDLE_TIMEOUT_S = 30.0  # a connection silent this long (between or inside requests) is closed
_LENGTH = re.compile(r"[0-9]{1,20}")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: OpenAILM holds one connection per thread
    server_version = "apprentice"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method == "POST" else b""
            status, payload = self.server.app.handle(
                method, urlsplit(self.path).path, self.headers, body, self._client_gone
            )
        except ClientGone:
            self.close_connection = True
            return
        except HTTPError as exc:
            status, payload = exc.status, error_body(exc.status, exc.message, exc.param)
        except Exception as exc:  # the details (paths, values) go to the log, not the client
            log.exception("%s %s failed", method, self.path)
            message = f"internal error ({type(exc).__name__}); the server's log has the details"
            status, payload = 500, error_body(500, message)
        self._send(status, payload)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length, not chunked")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        text = values.pop() if len(values) == 1 else "0" if not values else None
        if text is None or not _LENGTH.fullmatch(text):
            self.close_connection = True  # the body's end is unknown: the connection cannot go on
            shown = sorted(self.headers.get_all("Content-Length"))
            raise HTTPError(400, f"Content-Length must be one non-negative integer, got {shown}")
        length = int(text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise HTTPError(413, f"request body of {length} bytes is over {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _client_gone(self) -> bool:
        """Whether the client has closed its side (it sends nothing while it waits)."""
        return client_gone(self.connection)

    def _send(self, status: int, payload: Any) -> None:
        try:
            data, kind = _encode(payload)
        except Exception:  # never leave a client without an answer
            log.exception("cannot encode the reply to %s", self.path)
            status = 500
            data, kind = _encode(error_body(500, "internal error: the reply could not be encoded"))
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
        except OSError:  # the client left (or timed out): nothing to tell it
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _encode(payload: Any) -> tuple[bytes, str]:
    """(bytes, content type) of a route's payload; JSON is ASCII, so any string goes out."""
    if isinstance(payload, str):
        return payload.encode("utf-8", "backslashreplace"), "text/plain; charset=utf-8"
    if payload is None:
        return b"", "text/plain; charset=utf-8"
    return json.dumps(payload).encode("ascii"), "application/json"


def client_gone(connection: socket.socket) -> bool:
    """True when the peer closed the connection: it is readable and a peek reads nothing.
    A pipelined next request makes it readable too, but a peek then returns data."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset, or already closed
        return True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of clients connecting at once (a
    # program run over many threads) would see connections reset.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, app: ServingApp, max_connections: int, idle_timeout: float):
        self.app = app
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.refused: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        super().__init__(address, _Handler)
        threading.Thread(target=self._refuse_forever, name="refuse", daemon=True).start()

    def server_close(self) -> None:
        self.refused.put(None)
        super().server_close()

    def process_request(self, request, client_address) -> None:
        """Counted here, in the accepting thread, so the bound is exact: past it, the client
        is handed to the one refusing thread (a 503), and no thread is started for it."""
        with self.connections_lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                self.connections.add(request)
        if not full:
            super().process_request(request, client_address)
        elif self.refused.qsize() < self.max_connections:
            self.refused.put(request)
        else:  # a flood: drop it without a word
            self.shutdown_request(request)

    def _refuse_forever(self) -> None:
        """Answers each refused connection with a 503 and closes it gracefully: reading what
        the client sent before closing, so its reply is not lost to a reset."""
        body = json.dumps(
            error_body(503, f"the server has {self.max_connections} open connections; retry")
        ).encode()
        while (request := self.refused.get()) is not None:
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY % (len(body), body))
                request.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + 1.0
                while request.recv(65536) and time.monotonic() < deadline:
                    pass
            request.close()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def open_connections(self) -> int:
        with self.connections_lock:
            return len(self.connections)

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


def check_api_key(api_key: str | None) -> None:
    """A key must be one that HTTP clients can send: header values are ASCII (httpx and the
    openai client refuse anything else), so a key with other characters could never match."""
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be a non-empty string, or None for no key")
    odd = next((i for i, c in enumerate(api_key) if not (c.isascii() and c.isprintable())), None)
    if odd is not None:
        raise ValueError(
            f"api_key must be printable ASCII (clients send it in an HTTP header, which carries "
            f"ASCII only), but character {odd} is {api_key[odd]!r}: choose another key"
        )


def warn_if_exposed(host: str, api_key: str | None) -> bool:
    """Logs a warning (and returns True) when ``host`` reaches beyond this machine and no
    key guards the server."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback or api_key is not None:
        return False
    log.warning(
        "serving on %s without an API key: anyone who can reach this address can use the "
        "models (and load adapters, with an adapter root); set --api-key or VLLM_API_KEY",
        host,
    )
    return True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


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
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
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


if (
    __name__ == "__main__"
):  # python -m apprentice.serve.server: the same options as apprentice serve
    from apprentice.serve.cli import main

    raise SystemExit(main())
