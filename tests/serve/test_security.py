"""The server's guards: loopback by default, the API key, adapter paths confined to a root."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from serve_helpers import client
from test_server import QUESTIONS, ask, call

from apprentice.lm.base import LMRequestError


def _own_non_loopback_ip() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        ip = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if ip.startswith("127.") else ip


def test_default_bind_is_loopback_only(serve):
    server = serve()
    assert server.address[0] == "127.0.0.1"
    assert server._httpd.socket.getsockname()[0] == "127.0.0.1"
    with socket.create_connection(server.address, timeout=5):
        pass  # loopback answers
    ip = _own_non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(OSError):  # refused: nothing listens on the external address
        socket.create_connection((ip, server.port), timeout=2).close()


def test_api_key_is_required_when_configured(serve):
    server = serve(api_key="s3cret")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, _, reply = call(server, "POST", "/v1/chat/completions", body)
    assert status == 401 and reply["error"]["type"] == "AuthenticationError"
    assert "missing API key" in reply["error"]["message"]
    for header in ("Bearer wrong", "Basic s3cret", "s3cret"):
        status, _, reply = call(
            server, "POST", "/v1/chat/completions", body, {"Authorization": header}
        )
        assert (status, reply["error"]["message"]) == (401, "invalid API key")
    assert call(server, "GET", "/v1/models")[0] == 401
    load = {"lora_name": "x", "lora_path": "adapters/a/adapter"}
    assert call(server, "POST", "/v1/load_lora_adapter", load)[0] == 401  # refused before use
    assert call(server, "GET", "/health")[0] == 200  # as vLLM: health needs no key
    good = {"Authorization": "Bearer s3cret"}
    assert call(server, "POST", "/v1/chat/completions", body, good)[0] == 200
    with pytest.raises(LMRequestError) as refused:
        client(server, api_key="wrong").generate([ask(QUESTIONS[0])])
    assert refused.value.status == 401
    assert client(server, api_key="s3cret").generate([ask(QUESTIONS[0])])[0].texts


def test_adapter_paths_are_confined_to_the_root(serve, students, tmp_path):
    run_dir = students["causal"].run_dir
    outside = tmp_path / "outside-adapter"
    shutil.copytree(students["causal"].adapters["a"], outside)
    link = run_dir / "adapters" / "escape"
    os.symlink(outside, link)
    sneaky = run_dir / "adapters" / "sneaky"
    sneaky.mkdir()
    os.symlink(outside / "adapter_config.json", sneaky / "adapter_config.json")
    try:
        server = serve()
        for path in (
            "../outside-adapter",
            "adapters/../../outside-adapter",
            str(outside),
            "/etc",
            "adapters/escape",
            str(link),
        ):
            body = {"lora_name": "evil", "lora_path": path}
            status, _, reply = call(server, "POST", "/v1/load_lora_adapter", body)
            assert status == 400, path
            assert "outside the adapter root" in reply["error"]["message"], path
        body = {"lora_name": "evil", "lora_path": "adapters/a\x00/adapter"}
        status, _, reply = call(server, "POST", "/v1/load_lora_adapter", body)
        assert status == 400 and "not a usable path" in reply["error"]["message"]
        body = {"lora_name": "evil", "lora_path": "adapters/sneaky"}
        status, _, reply = call(server, "POST", "/v1/load_lora_adapter", body)
        message = reply["error"]["message"]
        assert status == 400 and "sneaky/adapter_config.json" in message
        assert "outside the adapter root" in message
        assert "evil" not in server.lm.adapter_names()
    finally:
        link.unlink()
        shutil.rmtree(sneaky)


def test_runtime_loading_is_off_without_an_adapter_root(serve):
    server = serve(adapter_root=None)
    body = {"lora_name": "x", "lora_path": "/anything"}
    status, _, reply = call(server, "POST", "/v1/load_lora_adapter", body)
    assert status == 403 and "--adapter-root" in reply["error"]["message"]
    status, _, _ = call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "a"})
    assert status == 403
    assert "a" in server.lm.adapter_names()


def test_oversized_bodies_are_refused_unread(serve):
    from apprentice.serve.server import MAX_BODY_BYTES

    server = serve()
    connection = socket.create_connection(server.address, timeout=5)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    connection.sendall(head.encode())
    chunks = []
    while chunk := connection.recv(4096):  # the server closes the connection after replying
        chunks.append(chunk)
    connection.close()
    reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413") and "Connection: close" in reply
    assert f"over {MAX_BODY_BYTES}" in reply


@pytest.mark.parametrize("key", ["clé", "key\u00a0", "tab\tkey", "\u043a\u043b\u044e\u0447"])
def test_an_api_key_no_client_could_send_is_refused_at_start(local_lm, key):
    from apprentice.serve.server import Server

    with pytest.raises(ValueError, match="printable ASCII"):
        Server(local_lm(), api_key=key)


def test_an_exposed_server_without_a_key_says_so(caplog):
    from apprentice.serve.server import warn_if_exposed

    with caplog.at_level("WARNING", logger="apprentice.serve.server"):
        assert warn_if_exposed("0.0.0.0", None) and warn_if_exposed("::", None)
        assert warn_if_exposed("my-host.example", None)
        assert not warn_if_exposed("0.0.0.0", "k3y")
        for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
            assert not warn_if_exposed(loopback, None)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and "without an API key" in warnings[0].getMessage()
