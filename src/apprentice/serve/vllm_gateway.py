"""Gateway: the front of ``apprentice serve --backend vllm``, enforcing what vLLM cannot.

vLLM loads any ``lora_path`` a client names (with runtime LoRA updating on), so it is not
given the public address: it listens on a private loopback port with a key of its own,
known only to the gateway, and the gateway serves the public address. It passes every
request through (streamed replies as they arrive) except:

- ``POST /v1/load_lora_adapter``: refused (403) without an adapter root; otherwise the
  adapter is read once under the root (``lm.adapter_files.read_adapter``: each open file
  must really lie inside it), staged into a private directory, and vLLM is told to load
  the staged copy, so what vLLM loads is what was checked;
- ``GET /v1/models``: each card's ``root`` (a path, in vLLM) becomes its id, and adapters
  loaded through the gateway carry the ``adapter_hash`` of the bytes that were staged;
- loading the weights a name already serves is answered 200 without asking vLLM (which
  refuses a taken name, 400 "already been loaded", even for the same weights);
- requests naming the base model (or none) go to ``base_adapter`` when vLLM has one: the
  zero adapter of its CPU build (``serve.zero_lora``), hidden from ``/v1/models`` and
  never loaded or unloaded by clients;
- an adapter swapped under a name (``load_inplace``, or loaded again after an unload with
  other weights) is loaded into vLLM under ``name-<hash8>`` and the name is mapped to it
  in every request's ``model``: vLLM keys its prefix cache by ``lora_name``, so an
  in-place load would answer from KV computed with the old weights (see
  ``vllm_server.VLLMServer``). Clients keep using the name; replies name the version;
- ``POST /v1/chat/completions`` and ``/v1/completions``: every sampling value left out is
  filled in as apprentice's in-process backends decode (``lm.vllm.explicit_sampling``:
  greedy, top_p 1.0, ...), since vLLM would take it from the model's generation_config.

The connection bounds, body checks and key check are those of our own server
(``serve.httpd``, ``protocol.authorize``); a client that leaves ends its upstream request.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apprentice.adapter import versioned_name
from apprentice.lm.adapter_files import OutsideRootError, read_adapter
from apprentice.serve.httpd import MAX_CONNECTIONS, HTTPServer, HTTPServer6, Relay
from apprentice.serve.protocol import ClientGone, HTTPError, authorize, json_object

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

WATCH_S = 0.1  # how often a request waiting on vLLM checks that its client is still there
PASSED_HEADERS = ("Content-Type", "Accept", "X-Request-Id")
GENERATION = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions")}


class Gateway:
    """``Gateway(upstream="http://127.0.0.1:PORT", upstream_key=..., adapter_root=...)``,
    bound at construction (``port=0``: a free one); ``start()`` serves from a thread,
    ``serve_forever()`` from this one, ``close()`` stops and removes the staged adapters."""

    def __init__(
        self,
        upstream: str,
        *,
        upstream_key: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        adapter_root: str | Path | None = None,
        base_model: str | None = None,
        base_adapter: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = 30.0,
        upstream_timeout: float = 3600.0,
    ) -> None:
        from apprentice.serve.protocol import check_api_key, warn_if_exposed

        check_api_key(api_key)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.upstream_key = upstream_key
        self.upstream_timeout = upstream_timeout
        self.api_key = api_key
        self.adapter_root = Path(adapter_root).resolve() if adapter_root is not None else None
        self.base_model = base_model
        self.base_adapter = base_adapter  # where base-model requests go (None: to the base)
        self.staging = Path(tempfile.mkdtemp(prefix="apprentice-gateway-"))  # 0700
        self.hashes: dict[str, str] = {}  # adapter -> hash of the staged bytes
        self.aliases: dict[str, str] = {}  # adapter -> the name vLLM serves it under
        self._first: dict[str, str] = {}  # adapter -> the hash first served under its name
        self._lock = threading.Lock()
        server_class = HTTPServer6 if ":" in host else HTTPServer
        self._httpd = server_class((host, port), self, max_connections, idle_timeout)
        self._thread: threading.Thread | None = None
        warn_if_exposed(host, api_key)

    @property
    def address(self) -> tuple[str, int]:
        return self._httpd.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Gateway:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- the app ---------------------------------------------------------------------------
    def admit(self, method: str, target: str, headers: Any) -> None:
        """From the request's head alone, before its body is read: a 401 without the key."""
        if urlsplit(target).path.startswith("/v1/"):
            authorize(headers.get("Authorization"), self.api_key)

    def handle(
        self, method: str, target: str, headers: Any, body: bytes, client_gone: Callable
    ) -> tuple[int, Any]:
        path = urlsplit(target).path
        if path.startswith("/v1/"):
            authorize(headers.get("Authorization"), self.api_key)
        if (method, path) == ("POST", "/v1/load_lora_adapter"):
            return self._load(body, client_gone)
        if (method, path) == ("POST", "/v1/unload_lora_adapter"):
            return self._unload(headers, body, client_gone)
        if (method, path) == ("GET", "/v1/models"):
            return self._models(client_gone)
        if (method, path) in GENERATION:
            body = self._explicit(body)
        return self.forward(method, target, headers, body, client_gone)

    def _explicit(self, body: bytes) -> bytes:
        """The request with its adapter name mapped to vLLM's and every omitted sampling
        value filled in (``lm.vllm.explicit_sampling``)."""
        from apprentice.lm.vllm import explicit_sampling

        data = json_object(body)
        with self._lock:
            model = data.get("model")
            if isinstance(model, str) and model in self.aliases:
                data["model"] = self.aliases[model]
            elif self.base_adapter and model in (None, self.base_model):
                data["model"] = self.base_adapter
        for name, value in explicit_sampling(0.0, None).items():
            if data.get(name) is None:
                data[name] = value
        return json.dumps(data).encode()

    def _load(self, body: bytes, client_gone: Callable) -> tuple[int, Any]:
        if self.adapter_root is None:
            raise HTTPError(
                403,
                "runtime adapter loading is off: start with an adapter root (--adapter-root "
                "DIR); adapters under it can then be loaded and unloaded",
            )
        data = json_object(body)
        name, path = data.get("lora_name"), data.get("lora_path")
        if not (isinstance(name, str) and name and isinstance(path, str) and path):
            raise HTTPError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        self._refuse_base_adapter(name)
        return self.load_adapter(data, root=self.adapter_root, client_gone=client_gone)

    def _refuse_base_adapter(self, name: Any) -> None:
        if self.base_adapter is not None and name == self.base_adapter:
            raise HTTPError(
                400,
                f"{name!r} is the zero adapter that base-model requests are served with; "
                "choose another adapter name",
                param="lora_name",
            )

    def load_adapter(
        self, request: dict, *, root: Path | None, client_gone: Callable = lambda: False
    ) -> tuple[int, Relay]:
        """Stages ``request["lora_path"]`` (read inside ``root``, when given) and asks vLLM
        to load the staged copy, under a versioned name when it replaces other weights
        (see the module docstring); vLLM's (status, reply)."""
        name, path = request["lora_name"], request["lora_path"]
        try:
            staged, digest = self.stage(path, root=root)
        except FileNotFoundError as exc:
            raise HTTPError(404, str(exc), param="lora_path") from None
        except (OutsideRootError, ValueError) as exc:
            raise HTTPError(400, str(exc), param="lora_path") from None
        with self._lock:
            old = self.aliases.get(name)
            same = old is not None and self.hashes.get(name) == digest
            served = versioned_name(name, digest, self._first.setdefault(name, digest))
        if same:
            return 200, Relay("text/plain", [f"Success: {name!r} serves these weights".encode()])
        if old is not None and not request.get("load_inplace"):
            served = old  # vLLM answers that the name is taken
        sent = {**request, "lora_name": served, "lora_path": str(staged)}
        if served != old:
            sent.pop("load_inplace", None)  # a name of its own: nothing is replaced in vLLM
        body = json.dumps(sent).encode()
        headers = {"Content-Type": "application/json"}
        status, reply = self.forward("POST", "/v1/load_lora_adapter", headers, body, client_gone)
        if status == 200 and served != old:
            with self._lock:
                self.hashes[name], self.aliases[name] = digest, served
            if old is not None:
                self._forward_unload(old, client_gone)
            log.info("runtime load: adapter %r from %r (hash %s) as %r", name, path, digest, served)
        return status, reply

    def _forward_unload(self, served: str, client_gone: Callable) -> tuple[int, Relay]:
        body = json.dumps({"lora_name": served}).encode()
        headers = {"Content-Type": "application/json"}
        return self.forward("POST", "/v1/unload_lora_adapter", headers, body, client_gone)

    def _unload(self, headers: Any, body: bytes, client_gone: Callable) -> tuple[int, Any]:
        name = json_object(body).get("lora_name")
        self._refuse_base_adapter(name)
        with self._lock:
            served = self.aliases.get(name, name) if isinstance(name, str) else name
        if not isinstance(served, str):
            return self.forward("POST", "/v1/unload_lora_adapter", headers, body, client_gone)
        status, reply = self._forward_unload(served, client_gone)
        if status == 200:
            with self._lock:
                self.hashes.pop(name, None)
                self.aliases.pop(name, None)
        return status, reply

    def stage(self, path: str | Path, *, root: Path | None = None) -> tuple[Path, str]:
        """(the private copy vLLM is told to load, its content hash) of the adapter at
        ``path``, read once (inside ``root`` when given). Copies are kept while the gateway
        runs: vLLM may read an adapter again after evicting it from its cache."""
        files = read_adapter(path, root=root)
        folder = self.staging / files.hash
        if not folder.exists():
            scratch = Path(tempfile.mkdtemp(dir=self.staging))
            files.stage(scratch)
            try:
                scratch.rename(folder)  # whole or not at all, also under concurrent loads
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
        return folder, files.hash

    def _models(self, client_gone: Callable) -> tuple[int, Any]:
        status, reply = self.forward("GET", "/v1/models", {}, b"", client_gone, buffered=True)
        if status != 200:
            return status, reply
        models = json.loads(b"".join(reply.chunks))
        with self._lock:
            hashes = dict(self.hashes)
            names = {served: name for name, served in self.aliases.items()}
        models["data"] = [c for c in models.get("data", []) if c.get("id") != self.base_adapter]
        for card in models["data"]:
            card["id"] = names.get(card.get("id"), card.get("id"))  # clients' names
            card["root"] = card.get("id")  # vLLM shows the path it loaded: paths stay private
            if card.get("id") in hashes:
                card["adapter_hash"] = hashes[card["id"]]
        return 200, models

    def forward(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes,
        client_gone: Callable,
        buffered: bool = False,
    ) -> tuple[int, Relay]:
        """vLLM's reply to this request, streamed (or read whole with ``buffered``)."""
        sent = {name: headers[name] for name in PASSED_HEADERS if headers.get(name)}
        if self.upstream_key:
            sent["Authorization"] = f"Bearer {self.upstream_key}"
        connection = http.client.HTTPConnection(*self.upstream, timeout=self.upstream_timeout)
        try:
            connection.request(method, target, body=body or None, headers=sent)
            _wait_readable(connection, client_gone)
            reply = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            log.warning("vLLM at %s:%d did not answer: %s", *self.upstream, exc)
            raise HTTPError(502, "the vLLM server behind this gateway did not answer") from None
        except ClientGone:
            connection.close()  # vLLM sees the disconnect and aborts the request
            raise
        length = reply.getheader("Content-Length")
        relay = Relay(
            content_type=reply.getheader("Content-Type", "application/octet-stream"),
            chunks=_chunks(reply),
            length=int(length) if length and length.isdigit() else None,
            close=connection.close,
        )
        if buffered:
            data = b"".join(relay.chunks)
            connection.close()
            relay = Relay(relay.content_type, [data], len(data))
        return reply.status, relay


def _wait_readable(connection: http.client.HTTPConnection, client_gone: Callable) -> None:
    """Waits for vLLM's first bytes, checking meanwhile that our client is still there."""
    while not select.select([connection.sock], [], [], WATCH_S)[0]:
        if client_gone():
            raise ClientGone


def _chunks(reply: http.client.HTTPResponse):
    while chunk := reply.read1(65536):
        yield chunk
