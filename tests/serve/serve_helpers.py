"""Helpers of the serve tests: tiny T5 and Llama students, each with two random LoRA
adapters laid out as a run directory (``run/adapters/<name>/adapter/`` + manifest.json).

Weights are drawn with a large spread so greedy outputs are varied token sequences and
the two adapters answer differently (a default random init repeats one token).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEXTS = [
    "Hi, I was charged twice for order A12345, please refund the extra payment.",
    "The app crashes every time I open order A55555. Thanks.",
    "Order A77777 has not arrived after two weeks. Please help!",
    "ticket category billing bug shipping order_id reasoning answer question",
] * 10
TARGETS = {"causal": ["q_proj", "v_proj", "down_proj"], "seq2seq": ["q", "v", "wo"]}
MAX_NEW = 10


@dataclass(frozen=True)
class Student:
    kind: str
    base: Path
    run_dir: Path
    adapters: dict[str, Path]  # a, b: PEFT directories inside run_dir


def build_student(kind: str, root: Path) -> Student:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from apprentice.train.export import AdapterManifest, write_manifest
    from apprentice.train.tiny import make_tiny_student

    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    base = make_tiny_student(
        kind, TEXTS, root / f"{kind}-base", hidden_size=64, num_layers=2, vocab_size=400
    )
    model = auto.from_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    model.save_pretrained(base)
    run_dir = root / f"{kind}-run"
    adapters = {}
    for seed, name in enumerate(("a", "b"), start=1):
        torch.manual_seed(seed)
        lora = LoraConfig(r=8, target_modules=TARGETS[kind], init_lora_weights=False)
        folder = run_dir / "adapters" / name / "adapter"
        get_peft_model(auto.from_pretrained(base), lora).save_pretrained(folder)
        write_manifest(folder, _manifest(AdapterManifest, name, kind, base))
        adapters[name] = folder
    return Student(kind, base, run_dir, adapters)


def _manifest(cls, name: str, kind: str, base: Path):
    reasons = [] if kind == "causal" else ["vLLM does not serve encoder-decoder (T5) models"]
    return cls(
        name=name,
        kind=kind,
        method="lora",
        base_model=str(base),
        base_model_hash="",
        dataset_hash="",
        predictors=["answer"],
        train_config={},
        lora_config={"r": 8, "target_modules": TARGETS[kind]},
        metrics={},
        servable={"vllm": kind == "causal", "reasons": reasons},
    )


def client(server, model=None, **options):
    """An OpenAILM aimed at ``server``: no cache, no retries, the server's max_tokens, unless asked."""
    from apprentice.lm.openai import OpenAILM

    options = {"cache": False, "max_retries": 0, "api_key": "", "max_tokens": None, **options}
    return OpenAILM(model or server.model_name, base_url=server.base_url, **options)


def misfit_adapter(source: Path, folder: Path, how: str) -> Path:
    """A copy of the adapter at ``source`` that does not fit its base model: ``shape`` (the
    last tensor's width changed, so the tensors before it load first), ``extra`` (a tensor
    for a layer the model lacks), ``missing`` (a LoRA weight left out), ``targets`` (a
    target module the model does not have)."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    last = sorted(weights)[-1]
    if how == "shape":
        weights[last] = torch.zeros(weights[last].shape[0], weights[last].shape[1] * 4)
    elif how == "extra":
        weights["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = weights[
            last
        ].clone()
    elif how == "missing":
        del weights[last]
    elif how == "targets":
        config = json.loads((folder / "adapter_config.json").read_text())
        config["target_modules"] = ["q_proj", "no_such_module"]
        (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(weights, folder / "adapter_model.safetensors")
    return folder
