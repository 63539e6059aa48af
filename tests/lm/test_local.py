"""LocalLM on tiny random-init students (T5 and Llama) with two random LoRA adapters each.

The weights are drawn with a large spread so that greedy outputs are varied token
sequences (a default random init repeats one token), which makes "the same output"
a sharp test of padding, positions and per-row adapter selection.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from apprentice.lm import local_batch
from apprentice.lm.base import LMError, Request
from apprentice.lm.local import LocalLM, get_engine
from apprentice.lm.registry import lm_from_config
from trained_base import HUB_NAME, REVISION, adapter_trained_with, hub_alias

TEXTS = [
    "Hi, I was charged twice for order A12345, please refund the extra payment.",
    "The app crashes every time I open order A55555. Thanks.",
    "Order A77777 has not arrived after two weeks. Please help!",
    "ticket category billing bug shipping order_id reasoning answer question",
] * 10
TARGETS = {"causal": ["q_proj", "v_proj", "down_proj"], "seq2seq": ["q", "v", "wo"]}
MAX_NEW = 12


def _scramble(auto, folder, *, seed: int, scale: float) -> None:
    """Rewrites the model in ``folder`` with widely spread random matrices (varied greedy
    outputs; a default random init repeats one token)."""
    import torch

    model = auto.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    model.save_pretrained(folder)


def _build(kind: str, root):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from apprentice.train.tiny import make_tiny_student

    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    base = make_tiny_student(kind, TEXTS, root / kind, hidden_size=64, num_layers=2, vocab_size=400)
    _scramble(auto, base, seed=0, scale=0.2)
    adapters = {}
    for seed, name in enumerate(("a", "b"), start=1):
        torch.manual_seed(seed)
        lora = LoraConfig(r=8, target_modules=TARGETS[kind], init_lora_weights=False)
        peft_model = get_peft_model(auto.from_pretrained(base), lora)
        adapters[name] = root / f"{kind}-{name}"
        peft_model.save_pretrained(adapters[name])
    return base, adapters


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-lm")
    return {kind: _build(kind, root) for kind in ("causal", "seq2seq")}


def make_lm(students, kind="causal", **options) -> LocalLM:
    base, adapters = students[kind]
    return LocalLM(base, adapters=adapters, max_new_tokens=MAX_NEW, **options)


# A shared instruction, as a program's predictor sends: causal batches share its KV cache.
SYSTEM = "Triage the customer ticket: say whether it is about billing, a bug or shipping."


def ask(text: str, **sampling) -> Request:
    messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": text})
    return Request(messages=messages, **sampling)


PROMPTS = [ask(t) for t in TEXTS[:4]]


def alone(lm: LocalLM, request: Request, adapter: str | None):
    """The request answered in a generate call of its own."""
    return lm.with_adapter(adapter).generate([request])[0]


@pytest.fixture
def row_tokens(monkeypatch):
    """The generated token ids of every row answered, in order."""
    seen: list[list[int]] = []
    finish_row = local_batch._finish_row

    def spy(engine, job, tokens, stopped_at):
        text, reason, count = finish_row(engine, job, tokens, stopped_at)
        seen.append(tokens[:count])
        return text, reason, count

    monkeypatch.setattr(local_batch, "_finish_row", spy)
    return seen


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_mixed_adapter_batch_matches_each_request_alone(students, kind, row_tokens):
    lm = make_lm(students, kind)
    requests = [p for p in PROMPTS[:3] for _ in range(3)]
    adapters = [None, "a", "b"] * 3  # every prompt with every adapter; prompt lengths differ
    before = lm.stats.batches, lm.stats.prefix_tokens_saved
    batched = [f.result() for f in lm.engine.submit(requests, adapters, max_new_tokens=MAX_NEW)]
    assert lm.stats.batches == before[0] + 1  # one generate call for all nine
    # causal rows compute their common prompt prefix once per adapter (T5 cannot)
    assert (lm.stats.prefix_tokens_saved > before[1]) == (kind == "causal")
    batched_tokens = list(row_tokens)
    for i, (request, adapter, response) in enumerate(zip(requests, adapters, batched, strict=True)):
        row_tokens.clear()
        single = alone(lm, request, adapter)
        assert row_tokens == [batched_tokens[i]], (adapter, request.messages[-1])  # token for token
        assert response.texts == single.texts
        assert response.usage == single.usage
        assert response.finish_reasons == single.finish_reasons
        assert response.usage.prompt_tokens == len(lm.engine.encode(request.messages))
        assert 0 < response.usage.completion_tokens <= MAX_NEW
    # The adapters change the answer (they are random, not the zero init).
    for i in range(0, 9, 3):
        assert len({r.text for r in batched[i : i + 3]}) == 3


def test_prompt_is_tokenized_exactly_as_in_training(students):
    from apprentice.dataset.tokenize import render_prompt

    for kind in ("causal", "seq2seq"):
        engine = make_lm(students, kind).engine
        messages = PROMPTS[0].messages
        expected = engine.tokenizer(
            render_prompt(messages, engine.tokenizer, kind), add_special_tokens=kind == "seq2seq"
        )["input_ids"]
        assert engine.encode(messages) == expected
    assert engine.encode(messages)[-1] == engine.tokenizer.eos_token_id  # T5 prompts end in </s>


def test_concurrent_program_runs_are_gathered_into_few_batches(students):
    lm = make_lm(students, batch_wait_ms=20)
    views = [lm.with_adapter(name) for name in (None, "a", "b")]
    expected = {
        (i, v): alone(lm, PROMPTS[i], views[v].adapter).texts for i in range(4) for v in range(3)
    }
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(64)

    def run(k: int) -> None:
        barrier.wait()
        results[k] = views[k % 3].generate([PROMPTS[k % 4]])[0].texts

    before = (lm.stats.batches, lm.stats.requests)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches, requests = lm.stats.batches - before[0], lm.stats.requests - before[1]
    assert requests == 64
    assert batches <= 8, f"64 concurrent calls took {batches} generate calls"
    for k in range(64):
        assert results[k] == expected[(k % 4, k % 3)]


def test_agenerate_gathers_coroutines_into_one_batch(students):
    lm = make_lm(students, adapter="a", batch_wait_ms=20)
    expected = [lm.generate([r])[0].texts for r in PROMPTS]

    async def main():
        return await asyncio.gather(*(lm.agenerate([r]) for r in PROMPTS))

    before = lm.stats.batches
    answers = asyncio.run(main())
    assert [a[0].texts for a in answers] == expected
    assert lm.stats.batches - before == 1


def test_stop_strings_cut_the_text_and_end_the_row_early(students):
    lm = make_lm(students)
    full = lm.generate([PROMPTS[1]])[0]
    text = full.text
    # a stop string from the middle of the greedy answer: two plain characters
    start = next(
        i for i in range(2, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].strip()
    )
    stop = text[start : start + 2]
    cut = lm.generate([ask(TEXTS[1], stop=[stop])])[0]
    assert cut.text == text[: text.find(stop)]
    assert cut.finish_reasons == ["stop"]
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    # a stopped row inside a batch with rows that do not stop gives the same answer
    mixed = lm.generate([ask(TEXTS[1], stop=[stop]), PROMPTS[0], PROMPTS[2]])
    assert (mixed[0].texts, mixed[0].usage, mixed[0].finish_reasons) == (
        cut.texts,
        cut.usage,
        cut.finish_reasons,
    )
    assert [m.text for m in mixed[1:]] == [
        lm.generate([p])[0].text for p in (PROMPTS[0], PROMPTS[2])
    ]


def test_max_tokens_is_per_request_inside_a_batch(students):
    lm = make_lm(students)
    short, long = lm.generate([ask(TEXTS[2], max_tokens=3), ask(TEXTS[2])])
    assert long.usage.completion_tokens == MAX_NEW  # the default max_new_tokens
    assert short.usage.completion_tokens == 3 and short.finish_reasons == ["length"]
    assert long.text.startswith(short.text)
    assert short.text == lm.generate([ask(TEXTS[2], max_tokens=3)])[0].text


def test_sampling_returns_n_completions_and_a_seed_repeats_them(students):
    lm = make_lm(students, adapter="b")
    request = ask(TEXTS[2], temperature=1.0, top_p=0.95, n=2, seed=7)
    first = lm.generate([request])[0]
    assert len(first.texts) == 2 and len(first.finish_reasons) == 2
    assert first.usage.completion_tokens >= 2
    assert lm.generate([request])[0].texts == first.texts
    greedy = lm.generate([ask(TEXTS[2], n=2)])[0]
    assert greedy.texts[0] == greedy.texts[1]


def test_an_unknown_adapter_fails_only_its_own_request(students):
    lm = make_lm(students)
    futures = lm.engine.submit(PROMPTS[:3], ["a", "nope", None], max_new_tokens=MAX_NEW)
    error = futures[1].exception()
    assert isinstance(error, LMError)
    assert "'nope'" in str(error) and "loaded" in str(error)
    assert futures[0].result().text == alone(lm, PROMPTS[0], "a").text
    assert futures[2].result().text == alone(lm, PROMPTS[2], None).text
    with pytest.raises(ValueError, match="'nope' is not loaded"):
        lm.with_adapter("nope")


def test_an_unloaded_adapter_gives_a_clear_error_and_others_still_answer(students):
    base, adapters = students["causal"]
    lm = LocalLM(base, adapters={"gone": adapters["a"]}, adapter="gone", max_new_tokens=MAX_NEW)
    assert "gone" in lm.adapter_names()
    lm.unload_adapter("gone")
    assert "gone" not in lm.adapter_names()
    results = lm.generate([PROMPTS[0]], return_exceptions=True)
    assert isinstance(results[0], LMError) and "'gone' is not loaded" in str(results[0])
    assert lm.with_adapter("a").generate([PROMPTS[0]])[0].text == alone(lm, PROMPTS[0], "a").text


def test_adapters_load_and_unload_while_requests_are_served(students):
    base, adapters = students["causal"]
    lm = make_lm(students, adapter="a")
    expected = [alone(lm, p, "a").text for p in PROMPTS]
    answers: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            answers.extend(r.text for r in lm.generate(PROMPTS))

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        lm.load_adapter("hot", adapters["b"])
        lm.unload_adapter("hot")
    stop.set()
    for thread in threads:
        thread.join()
    assert answers and set(answers) <= set(expected)
    assert "hot" not in lm.adapter_names()


def test_unloading_the_last_adapter_restores_the_base_model(students):
    base, adapters = students["causal"]
    lm = LocalLM(base, dtype="float64", max_new_tokens=MAX_NEW)  # an engine of its own
    before = lm.generate([PROMPTS[1]])[0].text
    lm.load_adapter("only", adapters["a"])
    assert lm.with_adapter("only").generate([PROMPTS[1]])[0].text != before
    lm.unload_adapter("only")
    assert lm.adapter_names() == []
    assert lm.generate([PROMPTS[1]])[0].text == before
    lm.load_adapter("only", adapters["a"])  # and an adapter loads again
    assert lm.with_adapter("only").generate([PROMPTS[1]])[0].text != before


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_merged_adapter_answers_like_the_unmerged_one(students, kind):
    base, adapters = students[kind]
    merged = LocalLM(base, adapters={"a": adapters["a"]}, merge=True, max_new_tokens=MAX_NEW)
    unmerged = make_lm(students, kind, adapter="a")
    assert merged.engine is not unmerged.engine and merged.adapter == "a"
    assert merged.identity == unmerged.identity  # same adapter content: same cache entries
    assert [r.texts for r in merged.generate(PROMPTS)] == [
        r.texts for r in unmerged.generate(PROMPTS)
    ]
    with pytest.raises(ValueError, match="merged"):
        merged.with_adapter(None)
    with pytest.raises(ValueError, match="merged"):
        merged.load_adapter("b", adapters["b"])
    rebuilt = lm_from_config(json.loads(json.dumps(merged.to_config())))
    assert rebuilt.engine is merged.engine


def test_missing_paths_fail_with_the_path_in_the_message(tmp_path, students):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        LocalLM(missing)
    base, _ = students["causal"]
    with pytest.raises(FileNotFoundError, match="no-such-adapter"):
        LocalLM(base, adapters={"x": tmp_path / "no-such-adapter"})


def test_config_round_trip_reuses_the_engine(students, tmp_path):
    lm = make_lm(students, adapter="a", batch_wait_ms=1.0)
    config = json.loads(json.dumps(lm.to_config()))
    assert config["backend"] == "local"
    assert config["adapter"] == "a" and config["adapters"] == {"a": str(students["causal"][1]["a"])}
    rebuilt = lm_from_config(config)
    assert isinstance(rebuilt, LocalLM)
    assert rebuilt.engine is lm.engine
    assert rebuilt.identity == lm.identity
    assert rebuilt.to_config() == config
    assert rebuilt.generate([PROMPTS[0]])[0].text == lm.generate([PROMPTS[0]])[0].text
    # A cache file of its own is saved as that file, not as "the default cache".
    cached = make_lm(students, adapter="a", cache=tmp_path / "student.sqlite")
    assert cached.to_config()["cache"] == str(tmp_path / "student.sqlite")
    assert (
        lm_from_config(cached.to_config(), trusted=True).cache.path == tmp_path / "student.sqlite"
    )


def test_cache_key_follows_the_adapter_content(students, tmp_path):
    base, adapters = students["causal"]
    lm = LocalLM(
        base, adapters={"swap": adapters["a"]}, adapter="swap", max_new_tokens=MAX_NEW, cache=True
    )
    first = lm.generate([PROMPTS[0]])[0]
    key, old_hash = lm.cache_key(PROMPTS[0]), lm.adapter_hash
    assert lm.generate([PROMPTS[0]])[0].cached
    assert lm.load_adapter("swap", adapters["a"]) == lm.adapter_hash  # same content: no-op
    with pytest.raises(ValueError, match="replace=True"):
        lm.load_adapter("swap", adapters["b"])
    lm.load_adapter("swap", adapters["b"], replace=True)
    assert lm.identity["adapter_hash"] != old_hash and lm.cache_key(PROMPTS[0]) != key
    swapped = lm.generate([PROMPTS[0]])[0]
    assert not swapped.cached
    assert swapped.text == alone(lm, PROMPTS[0], "b").text != first.text


def test_engines_are_shared_per_base_device_and_dtype(students):
    base, _ = students["seq2seq"]
    assert get_engine(base) is get_engine(str(base) + "/") is make_lm(students, "seq2seq").engine
    assert get_engine(base, dtype="bfloat16") is not get_engine(base)


def test_a_model_rewritten_in_place_gets_a_fresh_engine(tmp_path):
    """Retraining a full finetune (or rebuilding a tiny student) into the same folder must
    not serve the old weights from the process's engine cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from apprentice.train.tiny import make_tiny_student

    base = make_tiny_student("causal", TEXTS, tmp_path / "m", hidden_size=64, num_layers=2)
    first = LocalLM(base, max_new_tokens=MAX_NEW)
    assert LocalLM(base).engine is first.engine  # unchanged files: one engine

    _scramble(AutoModelForCausalLM, base, seed=5, scale=0.3)

    second = LocalLM(base, max_new_tokens=MAX_NEW)
    assert second.engine is not first.engine
    fresh = AutoModelForCausalLM.from_pretrained(base)
    loaded = dict(second.engine.network.named_parameters())
    assert all(torch.equal(p, loaded[n]) for n, p in fresh.named_parameters())


def test_the_engine_stops_on_the_tokenizers_eos_as_well_as_the_generation_configs(tmp_path):
    """Training appends the tokenizer's eos to every target; a generation config that names
    another end token (a chat model's end-of-turn) must not make the student run on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from apprentice.train.tiny import make_tiny_student

    base = make_tiny_student("causal", TEXTS, tmp_path / "m", hidden_size=64, num_layers=2)
    eos = AutoTokenizer.from_pretrained(base).eos_token_id
    other = eos + 1  # the generation config's own end token
    # A model that emits the tokenizer's eos first, whatever the prompt: every block adds
    # nothing (zero weights), every token embeds to the same vector, and only eos's output
    # row matches it.
    model = AutoModelForCausalLM.from_pretrained(base, tie_word_embeddings=False)
    with torch.no_grad():
        for weight in model.parameters():
            weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[eos] = 1.0
    model.config.tie_word_embeddings = False
    model.generation_config = GenerationConfig(eos_token_id=other, pad_token_id=0)
    model.save_pretrained(base)

    lm = LocalLM(base, max_new_tokens=MAX_NEW)
    assert lm.engine.eos_ids == {eos, other}
    reply = lm.generate([ask("Order A12345 never came.")])[0]
    # Before: eos_ids was {other} only, so it generated MAX_NEW eos tokens ("length").
    assert reply.finish_reasons == ["stop"] and reply.usage.completion_tokens == 1
    assert reply.texts == [""]


# -- how the base loads (student.attn_implementation, trust_remote_code, revision) ---------------
def test_loading_options_reach_the_engine_and_the_saved_config(students):
    from apprentice.lm.registry import UntrustedLMError

    plain = make_lm(students)
    eager = make_lm(students, loading={"attn_implementation": "eager"})
    assert eager.engine is not plain.engine  # another kernel: another engine
    assert eager.engine.network.config._attn_implementation == "eager"
    assert plain.engine.network.config._attn_implementation == "sdpa"  # transformers' default
    assert eager.with_adapter("b").engine is eager.engine
    assert "loading" not in plain.to_config()  # the defaults: a config as before
    config = json.loads(json.dumps(eager.to_config()))
    assert config["loading"] == {"attn_implementation": "eager"}
    assert lm_from_config(config).engine is eager.engine
    # Remote code named by a program file runs only when the caller trusts the file.
    config["loading"] = {"trust_remote_code": True}
    with pytest.raises(UntrustedLMError, match="trust_remote_code"):
        lm_from_config(config)


def test_a_revision_of_a_local_base_is_refused(students):
    with pytest.raises(ValueError, match=r"student.revision 'v1'.*local path"):
        make_lm(students, loading={"revision": "v1"})


# -- the base loads as its adapters trained (their manifests' base_model_options) ------------------
def test_the_base_loads_as_the_adapters_manifest_says(students, tmp_path, monkeypatch):
    import torch

    from apprentice.lm.engines import release_engines

    base, adapters = students["causal"]
    loads = hub_alias(monkeypatch, base)
    trained = {"dtype": "bfloat16", "revision": REVISION, "attn_implementation": "eager"}
    a = adapter_trained_with(adapters["a"], tmp_path / "a", trained)
    try:
        lm = LocalLM(HUB_NAME, adapters={"a": a}, adapter="a", max_new_tokens=MAX_NEW)
        [model_call] = loads["AutoModelForCausalLM"]
        assert model_call["revision"] == REVISION and model_call["dtype"] == torch.bfloat16
        assert model_call["attn_implementation"] == "eager"
        assert {c["revision"] for c in loads["AutoConfig"] + loads["AutoTokenizer"]} == {REVISION}
        network = lm.engine.network.get_base_model()
        assert network.dtype == torch.bfloat16 and lm.identity["dtype"] == "bfloat16"
        assert network.config._attn_implementation == "eager"
        assert lm.generate([ask("Order A12345 never came.")])[0].texts[0]
        assert lm.to_config()["loading"] == trained  # a saved program loads it the same way
        # an option the caller sets wins; the others still come from the manifest
        other = "fedcba9876543210fedcba9876543210fedcba98"
        mine = LocalLM(HUB_NAME, adapters={"a": a}, dtype="float32", loading={"revision": other})
        assert mine.engine is not lm.engine
        assert loads["AutoModelForCausalLM"][-1]["revision"] == other
        assert mine.engine.network.get_base_model().dtype == torch.float32
        assert mine.loading.attn_implementation == "eager"
    finally:
        release_engines(HUB_NAME)


def test_a_4bit_adapter_is_served_unquantized_on_a_cpu_with_a_warning(students, tmp_path, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine without CUDA")
    base, adapters = students["causal"]
    trained = {"load_in_4bit": True}
    a = adapter_trained_with(adapters["a"], tmp_path / "a", trained, base_model=str(base))
    with caplog.at_level("WARNING", logger="apprentice.student_loading"):
        lm = LocalLM(base, adapters={"a": a}, adapter="a", max_new_tokens=MAX_NEW)
    assert not lm.loading.load_in_4bit
    assert "adapter 'a' trained on a 4-bit base (load_in_4bit)" in caplog.text
    assert "need a CUDA GPU" in caplog.text
    # asked for by the caller, it fails instead, naming the option
    with pytest.raises(ValueError, match=r"load_in_4bit is set.*CUDA GPU"):
        LocalLM(base, adapters={"a": a}, loading={"load_in_4bit": True})


def test_remote_code_named_by_a_manifest_needs_the_callers_word(students, tmp_path):
    base, adapters = students["causal"]
    a = adapter_trained_with(
        adapters["a"], tmp_path / "a", {"trust_remote_code": True}, base_model=str(base)
    )
    with pytest.raises(PermissionError, match=r"adapter 'a' trained with trust_remote_code"):
        LocalLM(base, adapters={"a": a})
