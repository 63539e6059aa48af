"""The vLLM server path against a stand-in that holds to vLLM 0.26.0's rules
(``fake_vllm_serve.py``): an adapter swapped under a name must not be answered from KV
cached for the old weights, every sampling value is sent explicitly, and an adapter vLLM
refuses comes back as vLLM's 500."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from test_server import call

from apprentice.adapter import adapter_hash
from apprentice.lm.base import LMRequestError, Request
from apprentice.serve.cli import add_serve_arguments
from apprentice.serve.servable import find_servable
from apprentice.serve.vllm_backend import start_vllm_backend
from apprentice.serve.vllm_server import VLLMServer

FAKE_VLLM = (sys.executable, str(Path(__file__).with_name("fake_vllm_serve.py")))
QUESTION = ({"role": "user", "content": "Where is order A12345? It has not arrived yet."},)


def weights_of(folder: Path) -> str:
    """What the stand-in says an answer was computed with: the weights file's identity."""
    data = (folder / "adapter_model.safetensors").read_bytes()
    return "w" + hashlib.sha256(data).hexdigest()[:6]


def biased_copy(folder: Path, where: Path) -> Path:
    shutil.copytree(folder, where)
    config = json.loads((where / "adapter_config.json").read_text())
    (where / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))
    return where


def test_a_swapped_adapter_gets_a_new_vllm_name_and_the_program_binds_to_it(students, tmp_path):
    student = students["causal"]
    a, b = student.adapters["a"], student.adapters["b"]
    server = VLLMServer(
        student.base, log_path=tmp_path / "v.log", api_key="k", command=FAKE_VLLM
    ).start()
    try:
        request = Request(messages=QUESTION)
        server.load_adapter("triage", a)
        text = server.lm("triage", cache=False).generate([request])[0].text
        assert text.startswith(weights_of(a)) and "rep=1.0" in text  # not generation_config's
        server.load_adapter("triage", b, replace=True)
        versioned = f"triage-{adapter_hash(b)[:8]}"
        assert server.model_ids() == [server.model_name, versioned]  # the old one unloaded
        lm = server.lm("triage", cache=False)
        assert lm.adapter == versioned and lm.adapter_hash == adapter_hash(b)
        # before: loaded in place under "triage", answered from the old weights' cached KV
        assert lm.generate([request])[0].text.startswith(weights_of(b))
        server.load_adapter("triage", a, replace=True)  # back to the first weights
        assert server.model_ids() == [server.model_name, "triage"]
        with pytest.raises(LMRequestError, match="already been loaded"):
            server.load_adapter("triage", b)  # replace=False
        with pytest.raises(LMRequestError, match="Adapter bias is not supported") as refused:
            server.load_adapter("biased", biased_copy(b, tmp_path / "biased"))
        assert refused.value.status == 500  # vLLM's status for an adapter add_lora refuses
    finally:
        server.stop()


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_gateway_sends_explicit_sampling_and_versions_swapped_adapters(students, tmp_path):
    student = students["causal"]
    args = _args(str(student.run_dir), "--port", "0", "--api-key", "user-key")
    args.log_file = str(tmp_path / "vllm.log")
    server, gateway = start_vllm_backend(
        args, find_servable(student.run_dir), "user-key", command=FAKE_VLLM
    )
    key = {"Authorization": "Bearer user-key"}

    def answer(**body) -> str:
        chat = {"model": "a", "messages": list(QUESTION), **body}
        status, _, reply = call(gateway, "POST", "/v1/chat/completions", chat, key)
        assert status == 200, reply
        return reply["choices"][0]["message"]["content"]

    try:
        # vLLM fills omitted fields from generation_config (top_p 0.9, temperature 0.6)
        assert "t=0.7 top_p=1.0 top_k=0 min_p=0.0 rep=1.0" in answer(temperature=0.7)
        assert answer().startswith(weights_of(student.adapters["a"]) + " t=0.0 ")
        same = {"lora_name": "a", "lora_path": "adapters/a/adapter"}  # what "a" serves
        assert call(gateway, "POST", "/v1/load_lora_adapter", same, key)[0] == 200  # vLLM: 400
        assert len(server.model_ids()) == 3  # nothing was loaded
        swap = {"lora_name": "a", "lora_path": "adapters/b/adapter", "load_inplace": True}
        assert call(gateway, "POST", "/v1/load_lora_adapter", swap, key)[0] == 200
        assert answer().startswith(weights_of(student.adapters["b"]))  # not the old KV
        status, _, models = call(gateway, "GET", "/v1/models", headers=key)
        cards = {card["id"]: card for card in models["data"]}
        assert list(cards) == [student.base.name, "b", "a"]  # clients keep their names
        assert cards["a"]["adapter_hash"] == adapter_hash(student.adapters["b"])
        assert len(server.model_ids()) == 3  # the old version was unloaded in vLLM
        assert call(gateway, "POST", "/v1/unload_lora_adapter", {"lora_name": "a"}, key)[0] == 200
        assert "a" not in gateway.hashes and len(server.model_ids()) == 2
        biased_copy(student.adapters["b"], student.run_dir / "biased")
        load = {"lora_name": "biased", "lora_path": "biased"}
        status, _, reply = call(gateway, "POST", "/v1/load_lora_adapter", load, key)
        assert status == 500 and "bias" in reply["error"]["message"]
    finally:
        gateway.close()
        server.stop()
        shutil.rmtree(student.run_dir / "biased", ignore_errors=True)
