import sys
import types
import typing

import pytest

from apprentice.adapter import (
    FALLBACK_LORA_RANKS,
    VLLM_LORA_RANKS,
    smallest_lora_rank,
    vllm_lora_modules,
)
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.export import check_lora_config, check_servable
from apprentice.train.students import StudentError, default_target_modules, load_student


def test_kind_is_read_from_the_config(tiny_causal, tiny_t5):
    causal, t5 = load_student(tiny_causal), load_student(tiny_t5)
    assert (causal.kind, causal.family) == ("causal", "llama")
    assert (t5.kind, t5.family) == ("seq2seq", "t5")
    assert default_target_modules(causal.model, causal.family) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert default_target_modules(t5.model, t5.family) == ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(StudentError, match="no config.json"):
        load_student(tmp_path / "nope")


def test_configs_are_typed_and_reject_unknown_keys():
    with pytest.raises(ValueError, match="rnak"):
        LoraConfig(rnak=8)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size="many")
    assert TrainConfig(bf16="false").bf16 is False


def test_servability_names_every_problem():
    ok = check_servable("causal", r=16, target_modules=["q_proj", "v_proj"])
    assert ok.vllm and ok.reasons == []
    bad = check_servable(
        "causal",
        r=600,
        target_modules=["q_proj", "embed_tokens"],
        bias="lora_only",
        use_dora=True,
        modules_to_save=["lm_head"],
    )
    assert not bad.vllm
    text = str(bad)
    assert "r=600" in text and "DoRA" in text and "modules_to_save=['lm_head']" in text
    assert "bias='lora_only'" in text and "Adapter bias is not supported" in text
    assert "['embed_tokens']" in text  # without the model, embeddings are not known to be served
    t5 = check_servable("seq2seq", r=16, target_modules=["q"])
    assert not t5.vllm and "encoder-decoder" in str(t5)


@pytest.mark.parametrize("r", [1, 4, 12, 24, 320, 512])
def test_any_rank_up_to_the_largest_max_lora_rank_is_servable(r):
    # vllm/lora/peft_helper.py refuses only r > max_lora_rank; the engine's max_lora_rank
    # is one of vllm/config/lora.py's MaxLoRARanks, the adapter's r is any value up to it.
    assert check_servable("causal", r=r, target_modules=["q_proj"]).vllm
    assert smallest_lora_rank(r) == min(m for m in VLLM_LORA_RANKS if m >= r)
    assert smallest_lora_rank(4) == 8 and smallest_lora_rank(12) == 16


def test_a_trained_bias_is_not_servable():
    for bias in ("all", "lora_only"):
        assert not check_lora_config("causal", LoraConfig(bias=bias), ["q_proj"]).vllm
    assert check_lora_config("causal", LoraConfig(r=4), ["q_proj"]).vllm


def test_target_modules_are_checked_against_the_models_own_layers(tiny_causal):
    from transformers import AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(tiny_causal)
    modules = vllm_lora_modules(llama)
    # every linear layer, and for Llama the embeddings (vllm/model_executor/models/llama.py)
    assert {"q_proj", "o_proj", "down_proj", "embed_tokens", "lm_head"} <= modules
    assert "input_layernorm" not in modules and "norm" not in modules
    served = check_lora_config(
        "causal", LoraConfig(), ["q_proj", "embed_tokens", "lm_head"], model=llama
    )
    assert served.vllm, served
    refused = check_lora_config("causal", LoraConfig(), ["q_proj", "input_layernorm"], model=llama)
    assert not refused.vllm and "['input_layernorm']" in str(refused)
    llama.config.model_type = "qwen2"  # vLLM's Qwen2 class has no embedding LoRA
    assert "embed_tokens" not in vllm_lora_modules(llama)
    assert "lm_head" not in vllm_lora_modules(llama)


def test_the_rank_table_is_read_from_vllm_where_it_is_installed(monkeypatch):
    # a vLLM whose engine takes other ranks (its vllm/config/lora.py): the table follows it
    lora = types.ModuleType("vllm.config.lora")
    lora.MaxLoRARanks = typing.Literal[1, 8, 24]
    monkeypatch.setitem(sys.modules, "vllm.config.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.peft_helper", None)  # not importable
    assert set(VLLM_LORA_RANKS) == {1, 8, 24} and 16 not in VLLM_LORA_RANKS
    assert smallest_lora_rank(12) == 24 and smallest_lora_rank(30) is None
    wide = check_servable("causal", r=30, target_modules=["q_proj"])
    assert not wide.vllm and "above vLLM's largest max_lora_rank 24" in str(wide)
    monkeypatch.setitem(sys.modules, "vllm.config.lora", None)  # no vLLM: 0.32.0's table
    assert VLLM_LORA_RANKS == FALLBACK_LORA_RANKS and 16 in VLLM_LORA_RANKS


@pytest.mark.slow
@pytest.mark.vllm
def test_the_installed_vllms_own_check_runs_on_every_causal_adapter():
    pytest.importorskip("vllm")
    from peft import LoraConfig as PeftLoraConfig
    from vllm.config.lora import MaxLoRARanks

    assert set(VLLM_LORA_RANKS) == set(typing.get_args(MaxLoRARanks))
    plain = PeftLoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    served = check_servable("causal", r=16, target_modules=["q_proj"], peft_config=plain.to_dict())
    assert served.vllm and served.reasons == []
    refused = {  # adapter_config.json as peft writes it -> vLLM's words (peft_helper.py)
        "dora": ({"use_dora": True}, "vLLM does not yet support DoRA."),
        "bias": ({"bias": "all"}, "Adapter bias is not supported."),
        "lora_bias": ({"lora_bias": True}, "vLLM does not support LoRA bias (lora_bias)."),
        "pissa": ({"init_lora_weights": "pissa"}, "vLLM does not support init_lora_weights="),
        "rank_pattern": ({"rank_pattern": {"q_proj": 1024}}, "LoRA rank 1024 is greater than"),
    }
    for name, (fields, words) in refused.items():
        config = PeftLoraConfig(r=16, target_modules=["q_proj", "v_proj"], **fields).to_dict()
        verdict = check_servable("causal", r=16, target_modules=["q_proj"], peft_config=config)
        assert not verdict.vllm, name
        assert verdict.reasons[-1].startswith(f"vLLM refuses it: {words}"), verdict.reasons
    # what apprentice's copy of the rules does not know, vLLM's own check reports alone
    pissa = PeftLoraConfig(r=8, target_modules=["q_proj"], init_lora_weights="pissa").to_dict()
    only_vllm = check_servable("causal", r=8, target_modules=["q_proj"], peft_config=pissa)
    assert len(only_vllm.reasons) == 1 and "PiSSA" in only_vllm.reasons[0]


def test_a_gated_hub_model_names_the_token_fix(monkeypatch):
    import transformers

    def gated(name, **kwargs):
        # What transformers raises for a gated repo (utils/hub.py), the Hub being offline here.
        raise OSError(
            f"You are trying to access a gated repo.\nMake sure to have access to it at "
            f"https://huggingface.co/{name}.\n401 Client Error. (Request ID: x)"
        )

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", gated)
    with pytest.raises(StudentError) as caught:
        load_student("meta-llama/Llama-3.2-1B")
    message = str(caught.value)
    assert "'meta-llama/Llama-3.2-1B' is a gated or private model" in message
    assert "HF_TOKEN" in message and "hf auth login" in message and "\n" not in message
