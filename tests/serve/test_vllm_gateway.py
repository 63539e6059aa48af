"""The gateway in front of vLLM (``apprentice serve --backend vllm``): runtime loads are
confined to the adapter root before vLLM sees them, vLLM is reachable only with the
gateway's private key, replies stream through, and a client that leaves ends its request.
vLLM is played by our own server (``python -m apprentice.serve``), told to load
from anywhere, as vLLM does."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from test_server import call

from apprentice.serve.cli import add_serve_arguments
from apprentice.serve.httpd import client_gone
from apprentice.serve.servable import find_servable
from apprentice.serve.vllm_backend import start_vllm_backend
from apprentice.serve.vllm_gateway import Gateway
from apprentice.train.export import adapter_hash

OUR_SERVER = (sys.executable, "-m", "apprentice.serve")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_vllm_backend_confines_runtime_loads_to_the_adapter_root(students, tmp_path):
    student = students["causal"]
    outside = tmp_path / "outside"
    shutil.copytree(student.adapters["b"], outside)
    escape = student.run_dir / "escape"
    os.symlink(outside, escape)
    args = _args(str(student.run_dir), "--port", "0", "--api-key", "user-key")
    args.log_file = str(tmp_path / "vllm.log")
    server, gateway = start_vllm_backend(
        args,
        find_servable(student.run_dir),
        "user-key",
        command=OUR_SERVER,
        extra_args=["--adapter-root", "/", "--max-new-tokens", "4"],  # vLLM loads anything
    )
    key = {"Authorization": "Bearer user-key"}
    try:
        status, _, models = call(gateway, "GET", "/v1/models", headers=key)
        cards = {card["id"]: card for card in models["data"]}
        assert status == 200 and list(cards) == [student.base.name, "a", "b"]
        assert cards["a"]["adapter_hash"] == adapter_hash(student.adapters["a"])
        assert str(student.run_dir) not in json.dumps(models)  # roots are ids, not paths
        for path in (str(outside), "../../outside", "escape"):
            body = {"lora_name": "evil", "lora_path": path}
            status, _, reply = call(gateway, "POST", "/v1/load_lora_adapter", body, key)
            assert status in (400, 404), (path, reply)
        assert "evil" not in server.model_ids()  # vLLM never saw those loads
        body = {"lora_name": "fresh", "lora_path": "adapters/b/adapter"}
        assert call(gateway, "POST", "/v1/load_lora_adapter", body, key)[0] == 200
        assert "fresh" in server.model_ids()
        chat = {"model": "fresh", "messages": [{"role": "user", "content": "hi"}]}
        status, _, reply = call(gateway, "POST", "/v1/chat/completions", chat, key)
        assert status == 200 and reply["model"] == "fresh"
        assert call(gateway, "POST", "/v1/chat/completions", chat)[0] == 401  # the user's key
        # vLLM itself answers only the gateway's private key, not the user's
        vllm = SimpleNamespace(address=("127.0.0.1", server.port))
        assert call(vllm, "GET", "/v1/models", headers=key)[0] == 401
        unload = {"lora_name": "fresh"}
        assert call(gateway, "POST", "/v1/unload_lora_adapter", unload, key)[0] == 200
        assert "fresh" not in gateway.hashes
    finally:
        gateway.close()
        server.stop()
        escape.unlink()
    assert not gateway.staging.exists()  # staged copies are removed


class _Upstream(BaseHTTPRequestHandler):
    """A stand-in for vLLM: a streamed reply, and a reply that never comes."""

    protocol_version = "HTTP/1.1"
    left = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client_gone(self.connection):
            time.sleep(0.05)
        if client_gone(self.connection):
            type(self).left.set()

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Upstream.left.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_streamed_replies_pass_through(upstream):
    gateway = Gateway(upstream, upstream_key="private").start()
    try:
        connection = http.client.HTTPConnection(*gateway.address, timeout=30)
        connection.request("GET", "/v1/stream")
        reply = connection.getresponse()
        assert reply.getheader("Content-Type") == "text/event-stream"
        assert reply.read() == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        connection.close()
    finally:
        gateway.close()


def test_a_client_that_leaves_ends_its_upstream_request(upstream):
    gateway = Gateway(upstream, upstream_key="private").start()
    try:
        body = b'{"model": "x", "prompt": "hi"}'
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(gateway.address, timeout=30) as connection:
            connection.sendall(head.encode() + body)
            time.sleep(0.5)
        assert _Upstream.left.wait(60)  # the gateway closed its upstream connection
    finally:
        gateway.close()


def test_loads_are_off_without_an_adapter_root(upstream):
    gateway = Gateway(upstream, upstream_key="private").start()
    try:
        body = {"lora_name": "x", "lora_path": "/anything"}
        status, _, reply = call(gateway, "POST", "/v1/load_lora_adapter", body)
        assert status == 403 and "--adapter-root" in reply["error"]["message"]
    finally:
        gateway.close()
