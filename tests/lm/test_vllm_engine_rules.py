"""What VLLMLM decides before vLLM runs, checked against the stand-in of vLLM's Python API
(fake_vllm.py), which records the options an engine was made with: one engine per base
model in a process, ``close()`` shutting it down, the CUDA cache freed before it starts,
and the CPU build's choices (float32, a KV cache in bytes, base rows apart). The same
behaviour on the real engine is in tests/real_vllm/test_engine.py."""

from __future__ import annotations

import sys
import types

import fake_vllm as fake_vllm_module
import pytest
from test_vllm import TEXTS, ask

from apprentice.lm import vllm_engine
from apprentice.lm.base import LMError
from apprentice.lm.vllm import VLLMLM
from apprentice.train.tiny import make_tiny_student


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-rules")
    return make_tiny_student("causal", TEXTS, root / "causal", hidden_size=32, num_layers=1)


@pytest.fixture
def made(monkeypatch):
    monkeypatch.setattr(vllm_engine._TABLE, "engines", {})
    return fake_vllm_module.install(monkeypatch).made


def _on_cpu(monkeypatch, cpu: bool) -> None:
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)


def test_a_second_engine_for_the_same_base_is_refused_with_what_differs(base, made):
    lm = VLLMLM(base, max_lora_rank=16)
    assert VLLMLM(base, max_lora_rank=16).engine is lm.engine  # same options: shared
    with pytest.raises(ValueError, match=r"max_lora_rank=32 \(running: 16\)") as refused:
        VLLMLM(base, max_lora_rank=32)
    assert "release_engines" in str(refused.value)
    assert len(made) == 1


def test_close_shuts_the_engine_down_and_its_lms_say_so(base, made):
    lm = VLLMLM(base, max_new_tokens=4)
    assert lm.generate([ask("hi")])[0].text
    [llm] = made
    lm.close()
    assert llm.llm_engine.shut_down
    with pytest.raises(LMError, match="was shut down"):
        lm.generate([ask("hi")])
    again = VLLMLM(base, max_new_tokens=4)  # a new one starts a new engine
    assert again.engine is not lm.engine and len(made) == 2


def test_on_the_cpu_build_auto_is_float32_and_the_kv_cache_is_bytes_of_ram(base, made, monkeypatch):
    _on_cpu(monkeypatch, True)
    lm = VLLMLM(base)
    [llm] = made
    assert llm.options["dtype"] == "float32" and lm.identity["dtype"] == "float32"
    assert llm.options["kv_cache_memory_bytes"] == 1 << 30
    assert lm.engine.base_rows_alone
    # "auto" and the float32 it resolves to are the same engine
    assert VLLMLM(base, dtype="float32", kv_cache_gib=1).engine is lm.engine
    with pytest.raises(ValueError, match="kv_cache_gib must be a number of GiB > 0, got -1"):
        VLLMLM(base, kv_cache_gib=-1)


def test_on_a_gpu_vllm_chooses_the_dtype_and_its_memory_share_sizes_the_cache(base, made):
    lm = VLLMLM(base, gpu_memory_utilization=0.5)
    [llm] = made
    assert llm.options["dtype"] == "auto" and llm.options["kv_cache_memory_bytes"] is None
    assert llm.options["gpu_memory_utilization"] == 0.5
    assert not lm.engine.base_rows_alone


def test_the_cuda_cache_is_freed_before_the_engine_starts(base, made, monkeypatch):
    import torch

    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    original = fake_vllm_module.LLM.__init__

    def starting(self, model, **options):
        events.append("engine")
        original(self, model, **options)

    monkeypatch.setattr(fake_vllm_module.LLM, "__init__", starting)
    VLLMLM(base)
    assert events == ["empty_cache", "engine"]
