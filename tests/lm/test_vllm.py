"""VLLMLM's bookkeeping: the two refusals (a T5 student; no vLLM installed) are real.

The batching and adapter bookkeeping are checked in a second against a stand-in of the
``vllm`` API that VLLMLM uses (``fake_vllm.py``: ``LLM(...)``, ``LLM.generate`` with
per-prompt ``SamplingParams`` and ``LoRARequest``s, ``llm_engine.add_lora/remove_lora``)
that holds to vLLM 0.32.0's own rules: the SamplingParams it refuses, LoRARequests equal by
name, a prefix cache keyed by adapter name and path, a whole generate call failed by one
bad prompt, add_lora raising on a bad adapter. test_vllm_contract.py checks each of those
rules against the real engine; tests/real_vllm/ runs VLLMLM itself on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import types

import fake_vllm as fake_vllm_module
import pytest

from apprentice.adapter import adapter_hash
from apprentice.lm import vllm_engine
from apprentice.lm.base import Request
from apprentice.lm.engine import AdapterLoadError
from apprentice.lm.registry import lm_from_config
from apprentice.lm.vllm import VLLMLM
from trained_base import HUB_NAME, REVISION, adapter_trained_with, hub_alias

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


# -- against the stand-in of vLLM 0.32.0's rules (fake_vllm.py) --------------------------------
@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setattr(vllm_engine._TABLE, "engines", {})
    return fake_vllm_module.install(monkeypatch)


def ask(text: str, **sampling) -> Request:
    return Request(messages=({"role": "user", "content": text},), **sampling)


def weights_of(adapter_dir) -> str:
    """What the stand-in says an answer was computed with: the weights file's identity."""
    return (
        "w"
        + hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()[:6]
    )


def test_requests_from_many_threads_share_generate_calls(models, fake_vllm):
    lm = VLLMLM(models["causal"], adapters={"a": models["a"], "b": models["b"]}, max_loras=2)
    [llm] = fake_vllm.made
    assert llm.model == str(models["causal"].resolve())
    assert llm.options["enable_lora"] is True
    assert (llm.options["max_lora_rank"], llm.options["max_loras"]) == (16, 2)
    # ids from our table, loaded up front, each under a vLLM name of its content
    names = [f"{n}-{adapter_hash(models[n])[:8]}" for n in ("a", "b")]
    assert llm.llm_engine.added == [(names[0], 1), (names[1], 2)]
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
    assert sum(llm.calls) == 24 and len(llm.calls) <= 6
    expected = ("base", weights_of(models["a"]), weights_of(models["b"]))
    for k, text in results.items():
        assert text.startswith(expected[k % 3]) and " t=0.0 " in text and "max=5" in text
    assert lm.stats.requests == 24 and lm.stats.batches == len(llm.calls)


def test_adapter_table_and_cache_identity(models, fake_vllm, tmp_path):
    from apprentice.lm.cache import Cache

    lm = VLLMLM(models["causal"], adapters={"a": models["a"]}, adapter="a")
    [llm] = fake_vllm.made
    lm.cache = Cache(tmp_path / "c.sqlite")
    first_hash = lm.adapter_hash
    assert lm.generate([ask("hi")])[0].text.startswith(weights_of(models["a"]))
    # the same name, other weights: a new id (vLLM caches adapters by id), the old one
    # removed, and a new cache key, so the cached answer of the old weights is not returned
    lm.load_adapter("a", models["b"], replace=True)
    assert llm.llm_engine.added[-1][1] == 2 and llm.llm_engine.removed == [1]
    assert lm.adapter_hash not in (None, first_hash)
    again = lm.generate([ask("hi")])[0]
    assert not again.cached and again.text.startswith(weights_of(models["b"]))
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


def test_a_swapped_adapter_is_never_answered_from_the_old_weights_kv(models, fake_vllm):
    # vLLM keys prefix-cache blocks by lora_name and lora_path: a new adapter under a reused
    # name and path would be answered from KV computed with the old weights. Each content
    # gets its own name (and staged path).
    lm = VLLMLM(models["causal"], adapters={"a": models["a"]}, adapter="a")
    prompt = ask("Where is order A12345? " * 3)
    assert lm.generate([prompt])[0].text.startswith(weights_of(models["a"]))
    lm.load_adapter("a", models["b"], replace=True)  # swapped while serving
    assert lm.generate([prompt])[0].text.startswith(weights_of(models["b"]))
    lm.unload_adapter("a")  # unloaded, and loaded again with other weights
    lm.load_adapter("a", models["a"])
    assert lm.generate([prompt])[0].text.startswith(weights_of(models["a"]))


def test_sampling_is_explicit_and_what_vllm_refuses_is_handled_here(models, fake_vllm):
    lm = VLLMLM(models["causal"])
    # greedy with n > 1: vLLM refuses it; one completion is asked for and copied
    greedy = lm.generate([ask("hi", n=3)])[0]
    assert len(greedy.texts) == 3 and len(set(greedy.texts)) == 1
    sampled = lm.generate([ask("hi", n=2, temperature=0.7, seed=1)])[0]
    assert len(sampled.texts) == 2
    # every value is sent, none left to the model's generation_config
    assert "t=0.7 top_p=1.0 top_k=0 min_p=0.0 rep=1.0" in sampled.texts[0]
    assert "t=0.0 top_p=1.0" in greedy.texts[0]
    # an empty stop string is dropped (vLLM refuses it); a temperature above 2 fails alone
    hot, fine = lm.generate(
        [ask("hi", temperature=3.0), ask("hi", stop=("", "\n"))], return_exceptions=True
    )
    assert isinstance(hot, ValueError) and "temperature=3.0 is above 2" in str(hot)
    assert fine.text.startswith("base")


def test_a_prompt_over_the_context_fails_alone(models, fake_vllm):
    lm = VLLMLM(models["causal"], max_model_len=64, batch_wait_ms=200)
    answers = lm.generate(
        [ask("hi"), ask("order " * 80), ask("charged twice"), ask("hi", max_tokens=500)],
        return_exceptions=True,
    )
    assert answers[0].text.startswith("base") and answers[2].text.startswith("base")
    assert isinstance(answers[1], ValueError) and "max_model_len" in str(answers[1])
    assert isinstance(answers[3], ValueError) and "max_tokens=500 does not fit" in str(answers[3])
    assert fake_vllm.made[0].calls == [2]  # the good ones shared one generate call


def test_an_adapter_vllm_refuses_raises_and_nothing_changes(models, fake_vllm, tmp_path):
    biased = tmp_path / "biased"
    shutil.copytree(models["b"], biased)
    config = json.loads((biased / "adapter_config.json").read_text())
    (biased / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))
    lm = VLLMLM(models["causal"], adapters={"a": models["a"]}, adapter="a")
    with pytest.raises(AdapterLoadError, match="vLLM refused adapter 'a'.*bias is not supported"):
        lm.load_adapter("a", biased, replace=True)
    assert lm.adapter_hash == adapter_hash(models["a"])  # still the old adapter
    assert lm.generate([ask("hi")])[0].text.startswith(weights_of(models["a"]))


def test_every_adapter_stays_in_memory(models, fake_vllm, tmp_path):
    adapters = {}
    for k in range(5):
        adapters[f"x{k}"] = tmp_path / f"x{k}"
        shutil.copytree(models["a"], adapters[f"x{k}"])
    VLLMLM(models["causal"], adapters=adapters, max_loras=2)
    # vLLM's max_cpu_loras defaults to max_loras; past it, adapters are re-read from disk
    assert fake_vllm.made[0].options["max_cpu_loras"] == 5
    with pytest.raises(ValueError, match="max_cpu_loras must be an integer >= max_loras"):
        VLLMLM(models["causal"], max_loras=4, max_cpu_loras=2)


def test_the_recipes_vllm_binding_reaches_vllms_own_parallel_settings(models, fake_vllm):
    from apprentice.serve.binding import student_lm
    from apprentice.serve.config import ServeConfig

    serve = ServeConfig(backend="vllm", tensor_parallel_size=2, pipeline_parallel_size=2)
    lm = student_lm(serve, str(models["causal"]), adapters={"a": models["a"]}, adapter="a")
    options = fake_vllm.made[0].options
    assert (options["tensor_parallel_size"], options["pipeline_parallel_size"]) == (2, 2)
    assert lm.generate([ask("hi")])[0].text.startswith(weights_of(models["a"]))
    restored = lm_from_config(lm.to_config(), trusted=True)
    assert restored.engine is lm.engine  # the saved program finds the same engine


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


def test_the_students_loading_options_reach_vllm(models, fake_vllm):
    """trust_remote_code and the student's dtype reach vllm.LLM (VLLMLM's own dtype is
    auto: the student's serves); the attention kernel is not vLLM's."""
    lm = VLLMLM(
        models["causal"],
        loading={"trust_remote_code": True, "dtype": "bfloat16", "attn_implementation": "eager"},
    )
    [llm] = fake_vllm.made
    assert llm.options["trust_remote_code"] is True
    assert llm.options["dtype"] == "bfloat16"
    assert "revision" not in llm.options and "quantization" not in llm.options
    assert "attn_implementation" not in llm.options
    assert lm.with_adapter(None).engine is lm.engine
    config = json.loads(json.dumps(lm.to_config()))
    assert config["loading"] == {
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "attn_implementation": "eager",
    }
    assert lm_from_config(config, trusted=True).engine is lm.engine
    # an explicit dtype wins over the student's: another engine, refused while this one runs
    with pytest.raises(ValueError, match=r"dtype='float32' \(running: 'bfloat16'\)"):
        VLLMLM(models["causal"], dtype="float32", loading=config["loading"])


def test_the_base_loads_as_the_adapters_manifest_says(models, fake_vllm, tmp_path, monkeypatch):
    """The manifest's revision and dtype reach vllm.LLM (and the tokenizer), unless set."""
    loads = hub_alias(monkeypatch, models["causal"])
    trained = {"dtype": "bfloat16", "revision": REVISION}
    a = adapter_trained_with(models["a"], tmp_path / "a", trained)
    lm = VLLMLM(HUB_NAME, adapters={"a": a}, adapter="a")
    [llm] = fake_vllm.made
    assert llm.model == HUB_NAME and llm.options["dtype"] == "bfloat16"
    assert llm.options["revision"] == llm.options["tokenizer_revision"] == REVISION
    assert {c["revision"] for c in loads["AutoTokenizer"] + loads["AutoConfig"]} == {REVISION}
    assert lm.to_config()["dtype"] == "bfloat16" and lm.to_config()["loading"] == trained
    lm.close()
    VLLMLM(HUB_NAME, adapters={"a": a}, dtype="float32")  # an explicit dtype wins
    assert fake_vllm.made[-1].options["dtype"] == "float32"
    assert fake_vllm.made[-1].options["revision"] == REVISION


def test_a_4bit_adapter_is_served_unquantized_where_vllm_has_no_bitsandbytes(
    models, fake_vllm, tmp_path, caplog
):
    """vLLM 0.32 has no bitsandbytes quantization (fake_vllm.QUANTIZATION_METHODS)."""
    a = adapter_trained_with(
        models["a"], tmp_path / "a", {"load_in_4bit": True}, base_model=str(models["causal"])
    )
    with caplog.at_level("WARNING", logger="apprentice.student_loading"):
        lm = VLLMLM(models["causal"], adapters={"a": a}, adapter="a")
    assert "quantization" not in fake_vllm.made[-1].options
    assert "adapter 'a' trained on a 4-bit base (load_in_4bit)" in caplog.text
    assert "has no bitsandbytes quantization" in caplog.text
    lm.close()
    with pytest.raises(ValueError, match=r"load_in_4bit is set.*no bitsandbytes quantization"):
        VLLMLM(models["causal"], adapters={"a": a}, loading={"load_in_4bit": True})


def test_vllm_arguments_for_a_pinned_4bit_hub_student():
    from apprentice.student_loading import StudentLoading

    loading = StudentLoading(revision="0123abcd", load_in_4bit=True, attn_implementation="eager")
    assert vllm_engine.vllm_loading(loading) == {
        "revision": "0123abcd",
        "tokenizer_revision": "0123abcd",
        "quantization": "bitsandbytes",
    }
    assert vllm_engine.vllm_loading(StudentLoading()) == {}
    assert set(vllm_engine.vllm_loading(loading)) <= fake_vllm_module.OPTIONS  # vLLM's names
