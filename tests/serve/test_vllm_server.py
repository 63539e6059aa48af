"""The ``vllm serve`` supervisor, run against our own server: ``python -m
apprentice.serve.server`` takes vLLM's command line and speaks its protocol, so the
port choice, health wait, log file, runtime LoRA loading and shutdown are all real here."""

from __future__ import annotations

import socket
import sys

import pytest

from apprentice.lm.base import LMRequestError, Request
from apprentice.lm.local import LocalLM
from apprentice.serve.vllm_server import VLLMServer

OUR_SERVER = (sys.executable, "-m", "apprentice.serve")


def test_supervises_a_server_speaking_the_vllm_protocol(students, tmp_path):
    student = students["causal"]
    log_path = tmp_path / "run" / "logs" / "vllm_server.log"
    # Given the run directory, our server finds the adapters and their base in the manifests,
    # and takes the run directory as its adapter root.
    server = VLLMServer(
        student.run_dir,
        served_model_name="student",
        log_path=log_path,
        api_key="k3y",
        command=OUR_SERVER,
        extra_args=["--max-new-tokens", "8"],
        startup_timeout=120,
    )
    with server:
        assert server.running() and server.port > 0 and server.url.startswith("http://127.0.0.1:")
        assert server.model_ids() == ["student", "a", "b"]
        digest = server.load_adapter("triage", student.adapters["b"])
        assert server.model_ids() == ["student", "a", "b", "triage"]
        assert server.load_adapter("triage", student.adapters["b"]) == digest  # a no-op
        with pytest.raises(LMRequestError, match="already been loaded") as refused:
            server.load_adapter("triage", student.adapters["a"])
        assert refused.value.status == 400

        lm = server.lm("triage", cache=False, max_tokens=None)
        assert lm.adapter == "triage" and lm.adapter_hash == digest
        request = Request(messages=({"role": "user", "content": "Where is order A12345?"},))
        direct = LocalLM(student.base, adapters={"b": student.adapters["b"]}, max_new_tokens=8)
        assert (
            lm.generate([request])[0].texts == direct.with_adapter("b").generate([request])[0].texts
        )

        server.load_adapter("triage", student.adapters["a"], replace=True)
        assert server.lm("triage").adapter_hash not in (None, digest)
        server.unload_adapter("triage")
        assert server.model_ids() == ["student", "a", "b"]
        with pytest.raises(ValueError, match="not loaded"):
            server.lm("triage")
        process, port = server.process, server.port
    assert process.returncode is not None and not server.running()  # stopped on exit
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    log = log_path.read_text()
    assert "apprentice starts:" in log and "--enable-lora" in log and "--max-lora-rank 16" in log
    assert "k3y" not in log  # the key travels in the environment, not in argv
    assert "runtime load: adapter 'triage'" in log  # the server's own output went to the log


def test_a_server_that_exits_early_fails_start_with_its_log(tmp_path):
    script = "import sys; print('no GPU found, giving up'); sys.exit(3)"
    server = VLLMServer(
        "some/base", log_path=tmp_path / "v.log", command=(sys.executable, "-c", script)
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as failed:
        server.start()
    assert "no GPU found, giving up" in str(failed.value)


def test_a_server_that_never_gets_healthy_times_out_and_is_killed(tmp_path):
    script = "import time; print('loading...', flush=True); time.sleep(600)"
    server = VLLMServer(
        "some/base",
        log_path=tmp_path / "v.log",
        command=(sys.executable, "-c", script),
        startup_timeout=1.0,
        stop_timeout=5.0,
    )
    with pytest.raises(TimeoutError, match="not healthy after 1s") as failed:
        server.start()
    assert "loading..." in str(failed.value)
    assert server.process.returncode is not None  # terminated, not left running


def test_base_requests_through_the_zero_adapter_answer_as_the_base_model(students, tmp_path):
    """``base_lora``: the all-zero adapter (vLLM's CPU build needs it, serve.zero_lora) is a
    PEFT adapter that adds exactly nothing, and it stays out of the served ids."""
    student = students["causal"]
    server = VLLMServer(
        student.base,
        log_path=tmp_path / "v.log",
        base_lora=True,
        command=OUR_SERVER,
        extra_args=["--max-new-tokens", "8", "--adapter-root", "/"],
        startup_timeout=120,
    )
    with server:
        assert server.base_adapter == "zero-lora" and server.model_ids() == [server.model_name]
        assert "--max-loras 5" in " ".join(server.argv())  # a slot of its own
        lm = server.lm(None, cache=False, max_tokens=8)
        assert lm.adapter == "zero-lora"
        request = Request(messages=({"role": "user", "content": "Where is order A12345?"},))
        direct = LocalLM(student.base, max_new_tokens=8)
        assert lm.generate([request])[0].texts == direct.generate([request])[0].texts
        with pytest.raises(ValueError, match="base-model requests"):
            server.load_adapter("zero-lora", student.adapters["a"])
