"""serve.backend: vllm binds a trained student to VLLMLM -- checked in a second against the
stand-in of vLLM 0.32.0's rules (fake_vllm.py, held to the real engine by
test_vllm_contract.py)."""

from __future__ import annotations

import fake_vllm as fake_vllm_module
import pytest

import apprentice as ap
from apprentice.adapter import AdapterManifest, adapter_hash, write_manifest
from apprentice.lm import vllm_engine
from apprentice.lm.vllm import VLLMLM
from apprentice.serve.binding import bind_student
from apprentice.serve.config import ServeConfig

TEXTS = ["Where is order A12345? It has not arrived.", "I was charged twice."] * 5


class TwoSteps(ap.Module):
    def __init__(self) -> None:
        self.classify = ap.Predict("ticket -> category")
        self.extract = ap.Predict("ticket -> order_id")

    def forward(self, ticket: str):
        return self.extract(ticket=ticket)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from apprentice.train.tiny import make_tiny_student

    root = tmp_path_factory.mktemp("vllm-binding")
    base = make_tiny_student("causal", TEXTS, root / "base", hidden_size=32, num_layers=1)
    adapters = {}
    for name, rank in (("classify", 4), ("extract", 24)):
        folder = root / name / "adapter"
        lora = LoraConfig(r=rank, target_modules=["q_proj", "v_proj"])
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(folder)
        write_manifest(
            folder,
            AdapterManifest(
                name=name,
                kind="causal",
                method="lora",
                base_model=str(base),
                base_model_hash="",
                dataset_hash="",
                predictors=[name],
                train_config={},
                lora_config={"r": rank, "target_modules": ["q_proj", "v_proj"]},
                metrics={},
                servable={"vllm": True, "reasons": []},
            ),
        )
        adapters[name] = folder
    return base, adapters


def test_the_vllm_backend_binds_each_predictor_to_its_adapter_on_one_engine(
    student, monkeypatch, tmp_path
):
    monkeypatch.setattr(vllm_engine._TABLE, "engines", {})
    made = fake_vllm_module.install(monkeypatch)
    base, adapters = student
    config = ServeConfig(
        backend="vllm", max_new_tokens=8, max_batch_size=16, gpu_memory_utilization=0.5
    )
    groups = {"classify": ["classify"], "extract": ["extract"]}
    program = bind_student(TwoSteps(), groups, adapters, str(base), config)

    lms = {path: p.lm for path, p in program.named_predictors()}
    assert all(isinstance(lm, VLLMLM) for lm in lms.values())
    assert lms["classify"].engine is lms["extract"].engine
    assert {path: lm.adapter for path, lm in lms.items()} == {
        "classify": "classify",
        "extract": "extract",
    }
    assert lms["extract"].max_new_tokens == 8 and lms["extract"].max_batch_size == 16
    [llm] = made.made
    # One engine holding both adapters: the rank fits the widest (r=24 -> 32), four slots
    # (the shared default, so programs with up to 4 adapters share an engine), and every
    # adapter stays in vLLM's CPU cache instead of being re-read from disk.
    assert llm.options["max_lora_rank"] == 32 and llm.options["max_loras"] == 4
    assert llm.options["max_cpu_loras"] >= 2 and llm.options["gpu_memory_utilization"] == 0.5
    # vLLM sees names carrying the content hash (its prefix cache is keyed by name and path).
    loaded = {name for name, _ in llm.llm_engine.added}
    assert loaded == {f"{n}-{adapter_hash(adapters[n])[:8]}" for n in adapters}
    # The saved program records the backend, so load() binds vLLM again.
    saved = program.save(tmp_path / "program.json")
    restored = TwoSteps().load(saved, trusted=True)
    assert isinstance(restored.extract.lm, VLLMLM) and restored.extract.lm.adapter == "extract"
