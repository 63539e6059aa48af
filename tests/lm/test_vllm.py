"""VLLMLM on a CPU machine: the two refusals (a T5 student; no vLLM installed) are real.

vLLM cannot run here, so the batching and adapter bookkeeping are checked against a small
stand-in of the ``vllm`` API that VLLMLM uses (``LLM(...)``, ``LLM.generate`` with
per-prompt ``SamplingParams`` and ``LoRARequest``s, ``llm_engine.add_lora/remove_lora``).
It checks what VLLMLM sends, not what vLLM does with it; that runs on a GPU machine.
"""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest

from apprentice.lm import vllm as vllm_lm
from apprentice.lm.base import Request
from apprentice.lm.registry import lm_from_config
from apprentice.lm.vllm import VLLMLM

TEXTS = ["Where is order A12345? It has not arrived.", "I was charged twice."] * 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from apprentice.train.tiny import make_tiny_student

    root = tmp_path_factory.mktemp("vllm-lm")
    found = {
        kind: make_tiny_student(kind, TEXTS, root / kind, hidden_size=32, num_layers=1)
        for kind in ("causal", "seq2seq")
    }
    for name, rank in (("a", 8), ("b", 8), ("wide", 32)):
        lora = LoraConfig(r=rank, target_modules=["q_proj", "v_proj"])
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(found["causal"]), lora)
        peft_model.save_pretrained(root / name)
        found[name] = root / name
    return found


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError


def test_a_t5_student_is_refused_before_vllm_is_needed(models, no_vllm):
    with pytest.raises(ValueError, match="does not serve encoder-decoder") as refused:
        VLLMLM(models["seq2seq"])
    assert "LocalLM" in str(refused.value)


def test_without_vllm_the_error_says_how_to_get_it(models, no_vllm):
    with pytest.raises(ImportError, match="needs vLLM") as missing:
        VLLMLM(models["causal"])
    assert "apprentice[vllm]" in str(missing.value) and "LocalLM" in str(missing.value)
    # a saved program bound to vLLM says the same, rather than "unknown backend"
    with pytest.raises(ImportError, match="needs vLLM"):
        lm_from_config({"backend": "vllm", "model": str(models["causal"]), "adapter": None})


def test_bad_engine_options_are_refused(models, no_vllm):
    with pytest.raises(ValueError, match="max_lora_rank must be one of"):
        VLLMLM(models["causal"], max_lora_rank=12)
    with pytest.raises(ValueError, match="max_loras must be an integer"):
        VLLMLM(models["causal"], max_loras=0)


# -- the stand-in ------------------------------------------------------------------------------
@pytest.fixture
def fake_vllm(monkeypatch):
    record = types.SimpleNamespace(llm=None, calls=[], added=[], removed=[])

    class SamplingParams:
        def __init__(self, **options):
            self.__dict__.update(options)

    class LoRARequest:
        def __init__(self, lora_name, lora_int_id, lora_path):
            self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

    class Engine:
        def add_lora(self, request):
            record.added.append((request.lora_name, request.lora_int_id))
            return True

        def remove_lora(self, lora_id):
            record.removed.append(lora_id)
            return True

    class LLM:
        def __init__(self, model, **options):
            record.llm = (model, options)
            self.llm_engine = Engine()

        def generate(self, prompts, params, *, use_tqdm, lora_request):
            time.sleep(0.02)  # a forward pass: requests keep arriving meanwhile
            record.calls.append(len(prompts))
            return [
                types.SimpleNamespace(outputs=_outputs(prompt, p, lora))
                for prompt, p, lora in zip(prompts, params, lora_request, strict=True)
            ]

    def _outputs(prompt, params, lora):
        who = f"{lora.lora_name}#{lora.lora_int_id}" if lora else "base"
        text = f"{who} t={params.temperature} max={params.max_tokens} len={len(prompt['prompt_token_ids'])}"
        return [
            types.SimpleNamespace(index=i, text=text, token_ids=[1, 2], finish_reason="stop")
            for i in range(params.n)
        ]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_module = types.ModuleType("vllm.lora")
    request_module = types.ModuleType("vllm.lora.request")
    request_module.LoRARequest = LoRARequest
    for name, module in (
        ("vllm", vllm),
        ("vllm.lora", lora_module),
        ("vllm.lora.request", request_module),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_lm, "_ENGINES", {})
    return record


def ask(text: str, **sampling) -> Request:
    return Request(messages=({"role": "user", "content": text},), **sampling)


def test_requests_from_many_threads_share_generate_calls(models, fake_vllm):
    lm = VLLMLM(models["causal"], adapters={"a": models["a"], "b": models["b"]}, max_loras=2)
    model, options = fake_vllm.llm
    assert model == str(models["causal"].resolve())
    assert options["enable_lora"] is True
    assert (options["max_lora_rank"], options["max_loras"]) == (16, 2)
    assert fake_vllm.added == [("a", 1), ("b", 2)]  # ids from our table, loaded up front
    views = [lm.with_adapter(name) for name in (None, "a", "b")]
    assert all(view.engine is lm.engine for view in views)
    results: dict[int, str] = {}
    barrier = threading.Barrier(24)

    def run(k: int) -> None:
        barrier.wait()
        results[k] = views[k % 3].generate([ask(TEXTS[k % 2], max_tokens=5)])[0].text

    threads = [threading.Thread(target=run, args=(k,)) for k in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(fake_vllm.calls) == 24 and len(fake_vllm.calls) <= 6
    for k, text in results.items():
        assert text.startswith(("base", "a#1", "b#2")[k % 3]) and "t=0.0 max=5" in text
    assert lm.stats.requests == 24 and lm.stats.batches == len(fake_vllm.calls)


def test_adapter_table_and_cache_identity(models, fake_vllm, tmp_path):
    from apprentice.lm.cache import Cache

    lm = VLLMLM(models["causal"], adapters={"a": models["a"]}, adapter="a")
    lm.cache = Cache(tmp_path / "c.sqlite")
    first_hash = lm.adapter_hash
    assert lm.generate([ask("hi")])[0].text.startswith("a#1")
    # the same name, other weights: a new id (vLLM caches by id), the old one removed,
    # and a new cache key, so the cached answer of the old weights is not returned
    lm.load_adapter("a", models["b"], replace=True)
    assert fake_vllm.added[-1] == ("a", 2) and fake_vllm.removed == [1]
    assert lm.adapter_hash not in (None, first_hash)
    again = lm.generate([ask("hi")])[0]
    assert not again.cached and again.text.startswith("a#2")
    with pytest.raises(ValueError, match="rank r=32, above max_lora_rank=16"):
        lm.load_adapter("wide", models["wide"])
    with pytest.raises(ValueError, match="already loaded"):
        lm.load_adapter("a", models["a"])
    restored = lm_from_config(lm.to_config(), trusted=True)  # our own config: a cache file
    assert isinstance(restored, VLLMLM) and restored.engine is lm.engine
    assert restored.identity == lm.identity
    lm.unload_adapter("a")
    failed = lm.generate([ask("hello")], return_exceptions=True)[0]
    assert "'a' is not loaded" in str(failed)


def test_an_error_after_generate_fails_its_requests_and_the_engine_serves_on(models, fake_vllm):
    lm = VLLMLM(models["causal"])
    real_generate = lm.engine.llm.generate

    def malformed(prompts, params, *, use_tqdm, lora_request):
        real_generate(prompts, params, use_tqdm=use_tqdm, lora_request=lora_request)
        return [types.SimpleNamespace() for _ in prompts]  # no .outputs: reading it fails

    lm.engine.llm.generate = malformed
    answers: list = []
    caller = threading.Thread(
        target=lambda: answers.extend(lm.generate([ask("hi")], return_exceptions=True)),
        daemon=True,
    )
    caller.start()
    caller.join(timeout=60)  # before: the gathering thread died and this call never returned
    assert not caller.is_alive(), "the caller is still waiting on a dead gathering thread"
    assert "outputs" in str(answers[0]) and "vLLM" in str(answers[0])
    lm.engine.llm.generate = real_generate
    assert lm.generate([ask("again", max_tokens=5)])[0].text.startswith("base")
