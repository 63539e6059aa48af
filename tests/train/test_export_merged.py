"""`apprentice export RUN --merged DIR`: the student as one checkpoint folder with its adapter
folded in, which transformers loads with no adapter and which answers as base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apprentice.cli import main
from tiny_run import trained_run


def _trained(tmp_path: Path, *overrides: str) -> Path:
    return trained_run(tmp_path / "run", "train.max_steps=3", *overrides)


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("[[ticket]]\nMy order A12345 never came", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_merged_checkpoint_answers_as_base_plus_adapter(tmp_path, capsys, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = ["train.full_finetune=false", "train.learning_rate=0.05"] if method == "lora" else []
    root = _trained(tmp_path, *lora)
    out = tmp_path / "merged"
    assert main(["export", str(root), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)

    adapter = root / "adapters" / "multitask" / "adapter"
    stamp = json.loads((out / "apprentice_merged.json").read_text())
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert stamp["adapter_hash"] == manifest["adapter_hash"] and stamp["method"] == method
    assert not (out / "adapter_config.json").exists()  # a plain model, no adapter
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    if method == "lora":
        served = PeftModel.from_pretrained(base, adapter).eval()  # what LocalLM serves
    else:
        served = AutoModelForCausalLM.from_pretrained(adapter).eval()
    want = _logits(served, tokenizer)
    assert torch.allclose(_logits(merged, tokenizer), want, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    assert (_logits(plain, tokenizer) - want).abs().max() > 1e-3  # the adapter does something
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(root / "student").chat_template


def test_export_refuses_a_used_folder_and_a_changed_base(tmp_path, capsys):
    root = _trained(tmp_path, "train.full_finetune=false")
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep me")
    assert main(["export", str(root), "--merged", str(used)]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["mine.txt"]

    weights = next((root / "student").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # the base changed
    assert main(["export", str(root), "--merged", str(tmp_path / "new")]) == 1
    assert "changed since the adapter was trained" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "new")]) == 1
    assert "neither an adapter folder nor a run directory" in capsys.readouterr().err


def test_export_refuses_remote_code_unless_trusted_and_a_hub_base_at_a_branch(tmp_path, capsys):
    # An adapter folder may come from elsewhere: its manifest must not run code unasked.
    root = _trained(tmp_path, "train.full_finetune=false")
    path = root / "adapters" / "multitask" / "adapter" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "base_model_options": {"trust_remote_code": True}}))
    assert main(["export", str(root), "--merged", str(tmp_path / "a")]) == 1
    assert "export again with --trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # A hub base merged at a branch: the weights may have moved since training.
    hub = {
        **manifest,
        "base_model": "some-org/some-model",
        "base_model_options": {"revision": "main"},
    }
    path.write_text(json.dumps(hub))
    assert main(["export", str(root), "--merged", str(tmp_path / "b")]) == 1
    assert "40-character commit hash (got 'main'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
