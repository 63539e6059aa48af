"""The managed ``vllm serve`` against the real vLLM (its CPU build on a machine without a GPU):
SmolLM2 and the session's two trained adapters, vLLM behind the gateway as ``apprentice
serve --backend vllm`` runs it, float32 and a 1 GiB KV cache.

One server serves the module (a start takes ~40 s and ~5 GB); the last test stops it, then
runs ``apprentice serve --backend vllm`` itself in a process of its own. What the stand-in
(``fake_vllm_serve.py``) enforces about loads and unloads is checked here against both.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_server import call

from apprentice.adapter import adapter_hash
from apprentice.lm.base import Request
from apprentice.lm.openai import OpenAILM
from apprentice.serve.binding import bind_student
from apprentice.serve.cli import add_serve_arguments
from apprentice.serve.config import ServeConfig
from apprentice.serve.servable import find_servable
from apprentice.serve.swap import bind, swap_adapter
from apprentice.serve.vllm_backend import start_vllm_backend
from apprentice.serve.vllm_server import VLLMServer, free_port
from real_student import HELDOUT, Extract, adapter_folder

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

KEY = "user-key-for-the-gateway"
KEY_ENV = "APPRENTICE_TEST_GATEWAY_KEY"
FAKE_VLLM = (sys.executable, str(Path(__file__).with_name("fake_vllm_serve.py")))
NEW_TOKENS = 48  # an order id's answer ends well before
BASE_TOKENS = 32  # enough for a base row served with an adapter's weights to show
QUESTIONS = [f"In one sentence: what should I do about this? {e.ticket}" for e in HELDOUT[:4]]
_STARTED: list = []  # the module's (server, gateway), so the last test can stop them first


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def _answers(program, examples) -> list[str | None]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda e: program(**e.inputs()).order_id, examples))


def _texts(lm, questions) -> list[str]:
    """Greedy answers to free questions, ``BASE_TOKENS`` long at most."""
    requests = [
        Request(messages=({"role": "user", "content": q},), max_tokens=BASE_TOKENS)
        for q in questions
    ]
    return [response.text for response in lm.generate(requests)]


@pytest.fixture(scope="module")
def folders(smollm2_trained, smollm2_region) -> dict[str, Path]:
    root, _, _ = smollm2_trained
    return {"multitask": adapter_folder(root / "run"), "region": adapter_folder(smollm2_region[0])}


@pytest.fixture(scope="module")
def local(smollm2, smollm2_trained, smollm2_region) -> dict[str, list]:
    """What the local backend (transformers + peft, greedy) answers: the reference."""
    from apprentice.lm.local import LocalLM

    examples = HELDOUT[:8]
    return {
        "multitask": _answers(smollm2_trained[2], examples),
        "region": _answers(smollm2_region[1], examples[:4]),
        "base": _texts(LocalLM(smollm2), QUESTIONS),
    }


@pytest.fixture(scope="module")
def backend(smollm2_trained, folders, tmp_path_factory):
    """(VLLMServer, Gateway) as ``apprentice serve RUN --backend vllm`` starts them, with one
    adapter slot (so a base row mixed with adapter rows would land on a filled last slot)."""
    pytest.importorskip("vllm")
    root, _, _ = smollm2_trained
    logs = tmp_path_factory.mktemp("vllm-logs")
    args = _args(
        str(root / "run"),
        "--backend=vllm",
        "--port=0",
        f"--api-key={KEY}",
        "--dtype=float32",
        "--kv-cache-gib=1",
        "--max-loras=1",
        f"--adapter-root={tmp_path_factory.getbasetemp()}",  # both runs lie under it
        f"--log-file={logs / 'vllm.log'}",
    )
    server, gateway = start_vllm_backend(args, find_servable(root / "run"), KEY)
    _STARTED.append((server, gateway))
    yield server, gateway
    gateway.close()
    server.stop()


def _raw(server: VLLMServer, adapter: str | None = None) -> OpenAILM:
    """An OpenAILM asking vLLM itself (not the gateway) for the base model or an adapter."""
    return OpenAILM(
        server.model_name,
        base_url=server.base_url,
        api_key=server.api_key,
        adapter=adapter,
        cache=False,
        max_tokens=NEW_TOKENS,
        top_p=1.0,
    )


def _gateway_lm(gateway, server: VLLMServer, adapter: str | None = None) -> OpenAILM:
    return OpenAILM(
        server.model_name,
        base_url=gateway.url + "/v1",
        api_key=KEY,
        adapter=adapter,
        cache=False,
        max_tokens=NEW_TOKENS,
        top_p=1.0,
    )


def test_the_launcher_runs_vllms_cli_as_the_build_it_is():
    """vLLM's own ``vllm`` command dies on the CPU build (no ``vllm`` distribution); the
    launcher's answers the version vLLM's platform check reads, ``<version>+cpu``."""
    import importlib.metadata

    from apprentice.serve.vllm_launcher import cpu_build_version

    pytest.importorskip("vllm")
    launcher = [sys.executable, "-m", "apprentice.serve.vllm_launcher", "--version"]
    reply = subprocess.run(launcher, capture_output=True, text=True, timeout=300)
    assert reply.returncode == 0, reply.stderr[-3000:]
    wanted = cpu_build_version() or importlib.metadata.version("vllm")
    assert reply.stdout.strip().splitlines()[-1] == wanted
    if cpu_build_version() is not None:
        assert wanted.endswith("+cpu")  # the plain version would load the AVX512 kernels


def test_vllm_got_the_dtype_and_kv_cache_and_a_slot_for_the_zero_adapter(backend):
    server, _ = backend
    log = server.log_path.read_text()
    assert "--dtype float32 --kv-cache-memory-bytes 1073741824" in log  # our command line
    assert "dtype=torch.float32" in log  # what vLLM's engine runs with
    assert re.search(r"Explicitly set \(1\.0/[\d.]+\) GiB for KV cache", log)  # RAM, not a share
    assert "--max-loras 2" in log and server.base_adapter == "zero-lora"
    assert server.model_ids() == [server.model_name, "multitask"]  # the zero adapter is hidden


def test_base_rows_in_flight_with_adapter_rows_answer_as_the_base_model(backend, local):
    """vLLM's CPU kernels give a base row batched with adapter rows the last LoRA slot's
    adapter; through the zero adapter (the gateway's and ``lm(None)``'s route) base rows
    answer as LocalLM's base model does, token for token."""
    server, gateway = backend
    adapter = _gateway_lm(gateway, server, "multitask")
    routes = {
        "gateway": _gateway_lm(gateway, server),
        "lm(None)": server.lm(None, cache=False),
        "vLLM's base name": _raw(server),  # no zero adapter: the bug itself
    }
    found = {}
    for route, base in routes.items():
        with ThreadPoolExecutor(2) as pool:  # both kinds in flight in the same engine steps
            mixed = pool.submit(_texts, adapter, QUESTIONS + QUESTIONS)
            found[route] = pool.submit(_texts, base, QUESTIONS).result()
            mixed.result()
    assert found["gateway"] == local["base"]
    assert found["lm(None)"] == local["base"]
    # The bug is there to work around: if this fails, vLLM fixed it (the zero adapter can go).
    assert found["vLLM's base name"] != local["base"]


def test_a_program_bound_to_the_gateway_answers_as_the_local_backend(
    backend, folders, local, smollm2, monkeypatch
):
    server, gateway = backend
    monkeypatch.setenv(KEY_ENV, KEY)
    serve = ServeConfig(
        backend="openai",
        base_url=gateway.url + "/v1",
        api_key_env=KEY_ENV,
        model=server.model_name,
        max_new_tokens=NEW_TOKENS,
    )
    program = bind_student(
        Extract(),
        {"multitask": ["extract"]},
        {"multitask": folders["multitask"]},
        str(smollm2),
        serve,
    )
    served = f"multitask-{adapter_hash(folders['multitask'])[:8]}"
    assert program.extract.lm.adapter == served  # loaded through /v1/load_lora_adapter
    assert served in server.model_ids()
    answers = _answers(program, HELDOUT[:8])
    assert answers == local["multitask"]
    assert all(re.fullmatch(r"A\d{5}", a) for a in answers), answers
    # Binding again loads nothing: the server serves that name already.
    bind_student(
        Extract(),
        {"multitask": ["extract"]},
        {"multitask": folders["multitask"]},
        str(smollm2),
        serve,
    )
    assert server.model_ids().count(served) == 1


def test_loading_the_same_weights_again_is_a_no_op(backend, folders):
    server, gateway = backend
    before = server.model_ids()
    key = {"Authorization": f"Bearer {KEY}"}
    same = {"lora_name": "multitask", "lora_path": str(folders["multitask"])}
    for body in (same, {**same, "load_inplace": True}):
        status, _, reply = call(gateway, "POST", "/v1/load_lora_adapter", body, key)
        assert status == 200, reply
    assert server.model_ids() == before

    digest = server.load_adapter("direct", folders["multitask"])
    assert server.load_adapter("direct", folders["multitask"]) == digest
    assert server.model_ids() == [*before, "direct"]
    # vLLM itself refuses the name as taken, even for the same weights: the no-op is ours.
    raw = _raw_headers(server)
    again = {"lora_name": "direct", "lora_path": str(folders["multitask"])}
    status, _, reply = call(_at(server), "POST", "/v1/load_lora_adapter", again, raw)
    assert status == 400 and "has already been loaded" in reply["error"]["message"]


def _at(server: VLLMServer):
    """``call``'s target for vLLM itself."""
    return argparse.Namespace(address=("127.0.0.1", server.port))


def _raw_headers(server: VLLMServer) -> dict[str, str]:
    """vLLM's own key (the gateway's private one); vLLM reads JSON bodies only."""
    return {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}


def test_a_hot_swap_serves_the_new_weights_and_never_the_old(backend, folders, local):
    server, gateway = backend
    examples = HELDOUT[:4]
    # every row differs between the two adapters: one answered with stale weights shows
    assert all(a != b for a, b in zip(local["region"], local["multitask"], strict=False))
    program = Extract()
    lm = _gateway_lm(gateway, server)
    bind(program, lm, adapter="multitask")
    assert _answers(program, examples) == local["multitask"][:4]

    key = {"Authorization": f"Bearer {KEY}"}
    swap = {"lora_name": "multitask", "lora_path": str(folders["region"]), "load_inplace": True}
    status, _, reply = call(gateway, "POST", "/v1/load_lora_adapter", swap, key)
    assert status == 200, reply
    region = f"multitask-{adapter_hash(folders['region'])[:8]}"
    assert region in server.model_ids() and "multitask" not in server.model_ids()
    swap_adapter(program, "multitask")  # the new hash, for the cache key
    assert program.extract.lm.adapter_hash == adapter_hash(folders["region"])
    assert _answers(program, examples) == local["region"]

    back = {**swap, "lora_path": str(folders["multitask"])}
    assert call(gateway, "POST", "/v1/load_lora_adapter", back, key)[0] == 200
    swap_adapter(program, "multitask")
    assert _answers(program, examples) == local["multitask"][:4]

    # VLLMServer's own swap: other weights under a name go under a versioned name.
    server.load_adapter("direct", folders["multitask"])
    server.load_adapter("direct", folders["region"], replace=True)
    direct = Extract()
    direct.set_lm(server.lm("direct", cache=False, max_tokens=NEW_TOKENS))
    assert direct.extract.lm.adapter == f"direct-{adapter_hash(folders['region'])[:8]}"
    assert _answers(direct, examples) == local["region"]


def _refusals(server: VLLMServer, folders, biased: Path) -> list[tuple[int, str]]:
    """(status, message) of the loads, unloads and requests whose answers the stand-in
    imitates (vLLM's texts, paths shown as ``<path>``)."""
    raw = _raw_headers(server)
    target = _at(server)
    chat = {"model": server.model_name, "messages": [{"role": "user", "content": "hi"}]}
    bodies = [
        ("load", {"lora_name": "c1", "lora_path": ""}),
        ("load", {"lora_name": "c1", "lora_path": str(folders["multitask"])}),
        ("load", {"lora_name": "c1", "lora_path": str(folders["multitask"])}),
        ("load", {"lora_name": "c2", "lora_path": str(biased.parent / "missing")}),
        ("load", {"lora_name": "c3", "lora_path": str(biased)}),
        ("unload", {"lora_name": "c1"}),
        ("unload", {"lora_name": "c1"}),
        ("chat", {**chat, "temperature": 3.0}),
        ("chat", {**chat, "temperature": 0.0, "n": 2}),
        ("chat", {**chat, "stop": [""]}),
        ("chat", {**chat, "model": "nope"}),
    ]
    replies = []
    for verb, body in bodies:
        path = "/v1/chat/completions" if verb == "chat" else f"/v1/{verb}_lora_adapter"
        status, _, reply = call(target, "POST", path, body, raw)
        if isinstance(reply, str):  # a JSON string
            replies.append((status, reply))
        else:
            replies.append(
                (status, reply["error"]["message"] if "error" in reply else reply["text"])
            )
    status, _, _ = call(target, "GET", "/v1/models")  # no key
    return [*replies, (status, "")]


def test_the_stand_in_refuses_what_vllm_refuses_with_its_status_and_text(
    backend, folders, smollm2, tmp_path
):
    from test_vllm_rules import biased_copy

    server, _ = backend
    biased = biased_copy(folders["multitask"], tmp_path / "biased")
    real = _refusals(server, folders, biased)
    with VLLMServer(
        smollm2, log_path=tmp_path / "fake.log", api_key="k", command=FAKE_VLLM
    ) as fake:
        stand_in = _refusals(fake, folders, biased)
    statuses = [400, 200, 400, 404, 500, 200, 404, 400, 400, 400, 404, 401]
    assert [status for status, _ in real] == statuses
    assert [status for status, _ in stand_in] == [status for status, _ in real]
    for (_, vllm_says), (_, fake_says) in zip(real, stand_in, strict=True):
        assert fake_says in vllm_says, (fake_says, vllm_says)  # vLLM may say more
    assert "Adapter bias is not supported." in real[4][1]
    # a refused adapter leaves the engine serving
    assert _texts(_raw(server), QUESTIONS[:1])[0]


def test_the_server_stops_cleanly(backend):
    import psutil

    server, gateway = backend
    workers = psutil.Process(server.process.pid).children(recursive=True)
    assert len(workers) >= 2  # vLLM's engine core and its worker
    group, ports = server.process.pid, (server.port, gateway.address[1])
    zero_dir, staging = server._zero_dir, gateway.staging
    assert zero_dir.is_dir() and staging.is_dir()
    gateway.close()
    assert server.stop() == 0
    _wait_gone(group)
    assert not [w for w in workers if _alive(w)]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not zero_dir.exists() and not staging.exists()


def _alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(group: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process group {group} still runs"
        time.sleep(0.2)


def test_apprentice_serve_backend_vllm_serves_until_sigterm(smollm2_trained, local, tmp_path):
    """The command itself, in a process of its own: the gateway's URL answers for the base
    model and the adapter; SIGTERM stops it and every vLLM process, and frees the port."""
    import psutil

    pytest.importorskip("vllm")
    for server, gateway in _STARTED:  # one vLLM at a time
        gateway.close()
        server.stop()
    root, _, _ = smollm2_trained
    port = free_port()
    command = [sys.executable, "-m", "apprentice.cli", "serve", str(root / "run")]
    command += ["--backend", "vllm", "--port", str(port), "--api-key", KEY]
    command += ["--dtype", "float32", "--kv-cache-gib", "1", "--log-file", str(tmp_path / "v.log")]
    output = tmp_path / "serve.out"
    with output.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        gateway = argparse.Namespace(address=("127.0.0.1", port))
        deadline = time.monotonic() + 600
        while "apprentice serve: http" not in output.read_text():
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "apprentice serve did not come up in 600 s"
            time.sleep(1)
        status, _, models = call(
            gateway, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert status == 200 and [c["id"] for c in models["data"]][1:] == ["multitask"]
        lm = OpenAILM(
            models["data"][0]["id"],
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            cache=False,
            max_tokens=NEW_TOKENS,
            top_p=1.0,
        )
        assert _texts(lm, QUESTIONS[:2]) == local["base"][:2]
        program = Extract()
        bind(program, lm, adapter="multitask")
        assert _answers(program, HELDOUT[:2]) == local["multitask"][:2]
        assert "float32" in output.read_text()
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) >= 3  # vLLM's API server, engine core and worker
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, output.read_text()[-3000:]
    for worker in workers:
        psutil.wait_procs([worker], timeout=30)
    assert not [w for w in workers if _alive(w)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
