import pytest

from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.export import check_servable
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
        r=12,
        target_modules=["q_proj", "embed_tokens"],
        use_dora=True,
        modules_to_save=["lm_head"],
    )
    assert not bad.vllm
    text = str(bad)
    assert "r=12" in text and "DoRA" in text and "modules_to_save=['lm_head']" in text
    assert "['embed_tokens']" in text
    t5 = check_servable("seq2seq", r=16, target_modules=["q"])
    assert not t5.vllm and "encoder-decoder" in str(t5)
