"""The stand-in of vLLM's Python API (fake_vllm.py) against the real engine: each rule the
stand-in enforces is a test parametrized over [fake, real] that asserts the same observable
behaviour -- the same exception, the same words -- of both, so a stand-in that drifts from
the installed vLLM fails here, not in a user's hands.

The ``fake`` half runs in the fast suite and needs no vLLM. The ``real`` half is slow and
marked ``vllm``: one ``vllm.LLM`` on the session's SmolLM2 checkpoint (fp32, a 1 GiB KV
cache, LoRA r<=16 in 2 slots) serves the whole module and is shut down at its end; its
adapters are made with peft on that checkpoint (random, non-zero weights).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import types
import typing

import fake_vllm
import pytest

REAL = pytest.param("real", marks=[pytest.mark.slow, pytest.mark.vllm])
BOTH = ["fake", REAL]
ENGINE = {
    "dtype": "float32",
    "kv_cache_memory_bytes": 1 << 30,
    "enable_lora": True,
    "max_lora_rank": 16,
    "max_loras": 2,
}
# adapter_config.json fields vLLM refuses (vllm/lora/peft_helper.py), set on a copy of "a"
REFUSED_CONFIGS = {
    "dora": {"use_dora": True},
    "bias": {"bias": "all"},
    "lora_bias": {"lora_bias": True},
    "pissa": {"init_lora_weights": "pissa"},
    "saved": {"modules_to_save": ["lm_head"]},
    "no_rank": {"r": None},  # None: the field is left out
}


def make_adapters(base, root) -> dict[str, str]:
    """LoRA on q_proj/v_proj of ``base``: a (r=8), b (r=16), wide (r=32), and the refused."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    for name, rank in (("a", 8), ("b", 16), ("wide", 32)):
        lora = LoraConfig(
            r=rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )  # random weights: each adapter answers differently
        model = AutoModelForCausalLM.from_pretrained(base)
        get_peft_model(model, lora).save_pretrained(root / name)
        folders[name] = str(root / name)
    config = json.loads((root / "a" / "adapter_config.json").read_text())
    for name, fields in REFUSED_CONFIGS.items():
        shutil.copytree(root / "a", root / name)
        edited = {key: value for key, value in config.items() if key not in fields}
        edited |= {key: value for key, value in fields.items() if value is not None}
        (root / name / "adapter_config.json").write_text(json.dumps(edited))
        folders[name] = str(root / name)
    folders["missing"] = str(root / "missing")
    return folders


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    from apprentice.train.tiny import make_tiny_student

    root = tmp_path_factory.mktemp("contract-fake")
    base = make_tiny_student("causal", ["Write a poem."] * 4, root / "base", hidden_size=32)
    return types.SimpleNamespace(
        LLM=fake_vllm.LLM,
        SamplingParams=fake_vllm.SamplingParams,
        LoRARequest=fake_vllm.LoRARequest,
        model=str(base),
        llm=fake_vllm.LLM(str(base), **ENGINE),
        prompt=list(range(1, 30)),
        adapters=make_adapters(base, root),
    )


@pytest.fixture(scope="module")
def real(smollm2, tmp_path_factory):
    vllm = pytest.importorskip("vllm")
    from transformers import AutoTokenizer
    from vllm.lora.request import LoRARequest

    adapters = make_adapters(smollm2, tmp_path_factory.mktemp("contract-real"))
    chat = [{"role": "user", "content": "Write a short poem about the sea."}]
    prompt = AutoTokenizer.from_pretrained(smollm2).apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    llm = vllm.LLM(model=str(smollm2), **ENGINE)
    yield types.SimpleNamespace(
        LLM=vllm.LLM,
        SamplingParams=vllm.SamplingParams,
        LoRARequest=LoRARequest,
        model=str(smollm2),
        llm=llm,
        prompt=list(prompt),
        adapters=adapters,
    )
    llm.llm_engine.engine_core.shutdown()  # its processes stop, their memory goes back
    del llm
    gc.collect()


@pytest.fixture(params=BOTH)
def api(request):
    return request.getfixturevalue(request.param)


def greedy(api, max_tokens: int = 24, **options):
    return api.SamplingParams(temperature=0.0, max_tokens=max_tokens, **options)


def complete(api, params, lora=None, prompt=None) -> list:
    [output] = api.llm.generate(
        [{"prompt_token_ids": prompt or api.prompt}], params, use_tqdm=False, lora_request=lora
    )
    return output.outputs


def class_names(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__]


# -- SamplingParams ----------------------------------------------------------------------------
REFUSED_SAMPLING = {
    "cold": (
        {"temperature": -0.5},
        "temperature must be non-negative, got -0.5. (parameter=temperature, value=-0.5)",
    ),
    "hot": (
        {"temperature": 2.5},
        "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)",
    ),
    "n=0": ({"n": 0}, "n must be at least 1, got 0."),
    "n=1.5": ({"n": 1.5}, "n must be an int, but is of type <class 'float'>"),
    "greedy n": ({"temperature": 0.0, "n": 3}, "n must be 1 when using greedy sampling, got 3."),
    "max_tokens": (
        {"max_tokens": 0},
        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
    ),
    "top_p": ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)"),
    "empty stop": ({"stop": ["", "\n"]}, "stop cannot contain an empty string."),
    "nan": (
        {"temperature": float("nan")},
        "temperature must be a finite number, got nan. (parameter=temperature, value=nan)",
    ),
    "n too many": (
        {"n": 20000},
        "n must be at most 16384, got 20000. To increase this limit, set the "
        "VLLM_MAX_N_SEQUENCES environment variable.",
    ),
    "top_k": ({"top_k": -2}, "top_k must be 0 (disable), or at least 1, got -2."),
    "min_p": ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5."),
    "repetition": (
        {"repetition_penalty": 0.0},
        "repetition_penalty must be greater than zero, got 0.0.",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_SAMPLING))
def test_sampling_params_vllm_refuses(api, case):
    options, message = REFUSED_SAMPLING[case]
    with pytest.raises(Exception) as refused:
        api.SamplingParams(**options)
    assert "VLLMClientError" in class_names(refused.value)  # vLLM's 400, not a 500
    assert type(refused.value).__name__ == "VLLMValidationError"
    assert str(refused.value) == message


def test_greedy_sets_the_other_sampling_values_aside(api):
    params = api.SamplingParams(temperature=0.0, top_p=0.5, top_k=5, min_p=0.2)
    assert (params.top_p, params.top_k, params.min_p) == (1.0, 0, 0.0)
    assert api.SamplingParams(temperature=0.005).temperature == 0.01  # raised to _MAX_TEMP


# -- generate ----------------------------------------------------------------------------------
def test_a_stop_string_ends_the_text_before_it(api):
    [full] = complete(api, greedy(api))
    middle = len(full.text) // 2
    stop = full.text[middle : middle + 3]
    [cut] = complete(api, greedy(api, stop=[stop]))
    assert cut.text == full.text[: full.text.index(stop)]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)


def test_max_tokens_bounds_the_completion(api):
    [short] = complete(api, greedy(api, max_tokens=3))
    assert (len(short.token_ids), short.finish_reason) == (3, "length")
    [longer] = complete(api, greedy(api, max_tokens=6))
    assert (len(longer.token_ids), longer.finish_reason) == (6, "length")


def test_sampling_n_gives_n_completions(api):
    params = api.SamplingParams(n=3, temperature=0.8, seed=1, max_tokens=4)
    outputs = complete(api, params)
    assert sorted(c.index for c in outputs) == [0, 1, 2]
    assert all(1 <= len(c.token_ids) <= 4 for c in outputs)


def bad_prompt_error(case: str, limit: int) -> str:
    """vLLM's words for each bad prompt (vllm/renderers/params.py, input_processor.py)."""
    if case == "empty":
        return "The decoder prompt cannot be empty"
    if case == "full":
        return (
            f"The decoder prompt (length {limit}) plus the number of requested output tokens "
            f"(at least 1) is longer than the maximum model length of {limit}. Make sure that "
            "`max_model_len` is no smaller than the number of text tokens (prompt + requested "
            "output tokens)."
        )
    length = limit + (1 if case == "over" else 5)
    qualifier = "at least " if case == "over" else ""
    return (
        f"This model's maximum context length is {limit} tokens. However, your prompt contains "
        f"{qualifier}{length} input tokens, which exceeds this limit even without any output "
        f"tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
        f"value={length})"
    )


@pytest.mark.parametrize("case", ["empty", "full", "over", "far over"])
def test_one_bad_prompt_fails_the_whole_call(api, case):
    limit = api.llm.llm_engine.model_config.max_model_len
    bad = {"empty": 0, "full": limit, "over": limit + 1, "far over": limit + 5}[case]
    prompts = [{"prompt_token_ids": api.prompt}, {"prompt_token_ids": [1] * bad}]
    with pytest.raises(Exception) as failed:
        api.llm.generate(prompts, greedy(api, max_tokens=3), use_tqdm=False)
    assert type(failed.value).__name__ == "VLLMValidationError"
    assert str(failed.value) == bad_prompt_error(case, limit)
    # the good prompt went with the call: the next one answers its own prompt only
    after = api.llm.generate([prompts[0]], greedy(api, max_tokens=3), use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in after] == [3]


def test_prompts_and_lora_requests_pair_one_to_one(api):
    prompts = [{"prompt_token_ids": api.prompt}] * 2
    with pytest.raises(Exception) as failed:
        api.llm.generate(prompts, [greedy(api)], use_tqdm=False)
    assert type(failed.value).__name__ == "VLLMValidationError"
    assert str(failed.value) == "The lengths of prompts (2) and params (1) must be the same."
    with pytest.raises(Exception) as failed:
        api.llm.generate(prompts, greedy(api), use_tqdm=False, lora_request=[None])
    assert type(failed.value).__name__ == "VLLMValidationError"
    assert str(failed.value) == "The lengths of prompts (2) and lora_request (1) must be the same."


# -- LoRA ---------------------------------------------------------------------------------------
def test_lora_requests_are_equal_by_name_alone(api):
    request = api.LoRARequest
    assert request("a", 1, "/x") == request("a", 2, "/y")
    assert len({request("a", 1, "/x"), request("a", 2, "/y")}) == 1
    assert request("a", 1, "/x") != request("b", 1, "/x")
    with pytest.raises(ValueError, match=r"^id must be > 0, got 0$"):
        request("a", 0, "/x")
    with pytest.raises(AssertionError, match="^lora_path cannot be empty$"):
        request("a", 1)


def refusal(api, case: str) -> str:
    if case == "missing":
        return f"Loading lora missing failed: No adapter found for {api.adapters['missing']}"
    return {
        "wide": "LoRA rank 32 is greater than max_lora_rank 16.",
        "dora": "vLLM does not yet support DoRA.",
        "bias": "Adapter bias is not supported.",
        "lora_bias": "vLLM does not support LoRA bias (lora_bias).",
        "pissa": "vLLM does not support init_lora_weights='pissa'. Inits such as PiSSA, OLoRA, "
        "CorDA and LoftQ modify the base model weights when PEFT loads the adapter. Convert it "
        "to a regular LoRA adapter with PEFT's path_initial_model_for_weight_conversion, or set "
        "init_lora_weights to true if the served base model already contains the modified "
        "weights.",
        "no_rank": "Missing required configuration fields: {'r'}",
        "saved": 'vLLM only supports modules_to_save being either None or ["classifier", '
        "\"score\"] for classification models. Unsupported modules_to_save: ['lm_head']",
    }[case]


@pytest.mark.parametrize("case", ["wide", *REFUSED_CONFIGS, "missing"])
def test_add_lora_raises_on_an_adapter_vllm_refuses(api, case):
    engine = api.llm.llm_engine
    before = engine.list_loras()
    with pytest.raises(Exception) as refused:
        engine.add_lora(api.LoRARequest(case, 100, api.adapters[case]))
    assert str(refused.value) == (
        f"Call to add_lora method failed: Worker failed with error '{refusal(api, case)}', "
        "please check the stack trace above for the root cause"
    )
    assert engine.list_loras() == before  # nothing was loaded


def test_an_id_already_loaded_is_not_read_again(api):
    request, engine, params = api.LoRARequest, api.llm.llm_engine, greedy(api, max_tokens=8)
    a, b = api.adapters["a"], api.adapters["b"]
    assert engine.add_lora(request("a", 1, a)) is True
    [with_a] = complete(api, params, request("a", 1, a))
    [with_b] = complete(api, params, request("b", 2, b))
    assert with_a.text != with_b.text
    # id 1 under another name and path: vLLM only touches it, a's weights answer (stale)
    assert engine.add_lora(request("b-as-1", 1, b)) is True
    [stale] = complete(api, params, request("b-as-1", 1, b))
    assert stale.text == with_a.text
    # load_inplace: read again, under the same id
    assert engine.add_lora(request("a", 1, b, load_inplace=True)) is True
    [reloaded] = complete(api, params, request("a", 1, b))
    assert reloaded.text == with_b.text
    assert engine.remove_lora(1) is True and engine.remove_lora(2) is True
    assert engine.remove_lora(1) is False and engine.list_loras() == []


# -- engine options -----------------------------------------------------------------------------
REFUSED_OPTIONS = {
    "unknown": ({"max_adapters": 2}, TypeError, "unexpected keyword argument 'max_adapters'"),
    "rank": (
        {"max_lora_rank": 12},
        ValueError,
        "max_lora_rank\n  Input should be 1, 8, 16, 32, 64, 128, 256, 320 or 512",
    ),
    "cpu loras": (
        {"max_loras": 4, "max_cpu_loras": 2},
        ValueError,
        "max_cpu_loras (2) must be >= max_loras (4).",
    ),
    "dtype": (
        {"dtype": "fp32"},
        ValueError,
        "Input should be 'auto', 'half', 'float16', 'bfloat16', 'float' or 'float32'",
    ),
    # load_in_4bit's bitsandbytes: vLLM 0.32 has no such quantization method
    "bitsandbytes": (
        {"quantization": "bitsandbytes"},
        ValueError,
        "Unknown quantization method: bitsandbytes.",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_OPTIONS))
def test_engine_options_vllm_refuses(api, case):
    options, kind, words = REFUSED_OPTIONS[case]
    with pytest.raises(kind) as refused:  # before any engine process starts
        api.LLM(model=api.model, **{**ENGINE, **options})
    assert words in str(refused.value)


@pytest.mark.slow
@pytest.mark.vllm
def test_the_stand_ins_tables_are_the_installed_vllms():
    pytest.importorskip("vllm")
    from vllm import envs, sampling_params
    from vllm.config.lora import MaxLoRARanks
    from vllm.config.model import ModelDType
    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.v1.core.kv_cache_utils import _gen_lora_extra_hash_keys

    assert typing.get_args(MaxLoRARanks) == fake_vllm.MAX_LORA_RANKS
    assert typing.get_args(ModelDType) == fake_vllm.DTYPES
    assert fake_vllm.OPTIONS.issubset(field.name for field in dataclasses.fields(EngineArgs))
    assert fake_vllm.SAMPLING_EPS == sampling_params._SAMPLING_EPS
    assert fake_vllm.MAX_TEMP == sampling_params._MAX_TEMP
    assert fake_vllm.MAX_N == envs.VLLM_MAX_N_SEQUENCES
    assert tuple(QUANTIZATION_METHODS) == fake_vllm.QUANTIZATION_METHODS
    # the prefix cache's key for a request's adapter: its name and its path
    for args in (None, ("a", 1, "/adapters/a")):
        real = _gen_lora_extra_hash_keys(
            types.SimpleNamespace(lora_request=args and LoRARequest(*args))
        )
        assert real == fake_vllm.lora_extra_hash_keys(args and fake_vllm.LoRARequest(*args))
