import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apprentice.dataset import tokenize_rows
from apprentice.train.batching import collate_padded, collate_padding_free, length_grouped_batches
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.export import read_manifest
from apprentice.train.sft import train_adapter
from apprentice.train.students import StudentError, load_student, model_hash

DRIVER = Path(__file__).with_name("train_driver.py")
ROOT = Path(__file__).resolve().parents[2]
QUICK = TrainConfig(max_steps=4, batch_size=8, learning_rate=1e-3, logging_steps=1)


def _log(out_dir):
    return [
        json.loads(line) for line in (Path(out_dir) / "train_log.jsonl").read_text().splitlines()
    ]


def test_lora_run_exports_a_peft_adapter_with_its_manifest(demo_dataset, tiny_causal, tmp_path):
    base_hash = model_hash(tiny_causal)
    result = train_adapter(
        demo_dataset,
        tiny_causal,
        tmp_path,
        lora=LoraConfig(r=8, alpha=16),
        train=QUICK,
        progress=False,
    )
    adapter = result.adapter_dir
    assert (adapter / "adapter_config.json").exists() and (
        adapter / "adapter_model.safetensors"
    ).exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and not config.get("modules_to_save")
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)  # LoRA only, no full weights
    assert any(w.abs().sum() > 0 for n, w in weights.items() if "lora_B" in n)  # it trained
    manifest = read_manifest(adapter)
    assert (manifest.method, manifest.kind, manifest.base_model_hash) == (
        "lora",
        "causal",
        base_hash,
    )
    assert manifest.servable == {"vllm": True, "reasons": []}
    assert manifest.lora_config["target_modules"][0] == "q_proj"
    assert manifest.predictors == ["classify", "extract"] and manifest.dataset_hash
    assert manifest.metrics["steps"] == 4 and manifest.metrics["tokens"] > 0
    assert model_hash(tiny_causal) == base_hash  # the base is untouched, nothing merged
    assert [e["step"] for e in _log(tmp_path) if "loss" in e] == [1, 2, 3, 4]
    assert any("val_loss" in e for e in _log(tmp_path))
    assert not (tmp_path / "tracking").exists()  # no tracker unless train.report_to names one


def test_full_finetune_of_t5_lowers_the_loss(demo_dataset, tiny_t5, tmp_path):
    train = TrainConfig(
        max_steps=12, batch_size=8, learning_rate=3e-3, logging_steps=1, full_finetune=True
    )
    result = train_adapter(demo_dataset, tiny_t5, tmp_path, train=train, progress=False)
    losses = [e["loss"] for e in _log(tmp_path) if "loss" in e]
    assert losses[-1] < losses[0] * 0.8
    assert result.manifest.method == "full" and not result.manifest.servable["vllm"]
    reloaded = load_student(result.adapter_dir)  # a standalone model directory
    assert reloaded.kind == "seq2seq"


def test_per_predictor_rows(demo_dataset, tiny_t5, tmp_path):
    result = train_adapter(
        demo_dataset,
        tiny_t5,
        tmp_path,
        train=QUICK,
        predictors=["extract"],
        name="extract",
        progress=False,
    )
    assert result.manifest.predictors == ["extract"] and result.manifest.name == "extract"
    with pytest.raises(ValueError, match=r"predictors \['nope'\] are not in the dataset"):
        train_adapter(
            demo_dataset, tiny_t5, tmp_path / "x", train=QUICK, predictors=["nope"], progress=False
        )


def test_bad_configs_fail_before_training(demo_dataset, tiny_causal, tmp_path):
    # vLLM serves r=12 (r <= max_lora_rank 16) but no trained bias (vllm/lora/peft_helper.py)
    with pytest.raises(ValueError, match=r"bias='all' is not supported"):
        train_adapter(
            demo_dataset,
            tiny_causal,
            tmp_path / "a",
            lora=LoraConfig(bias="all"),
            train=QUICK,
            progress=False,
        )
    with pytest.raises(ValueError, match="DoRA"):
        train_adapter(
            demo_dataset, tiny_causal, tmp_path / "b", lora=LoraConfig(use_dora=True), train=QUICK
        )
    with pytest.raises(StudentError, match=r"target module\(s\) \['query'\] do not exist"):
        train_adapter(
            demo_dataset,
            tiny_causal,
            tmp_path / "c",
            lora=LoraConfig(target_modules=["query"]),
            train=QUICK,
        )
    with pytest.raises(StudentError, match="no config.json"):
        train_adapter(demo_dataset, tmp_path / "missing-model", tmp_path / "d", train=QUICK)
    with pytest.raises(FileNotFoundError, match="not a dataset directory"):
        train_adapter(tmp_path / "missing-data", tiny_causal, tmp_path / "e", train=QUICK)
    with pytest.raises(ValueError, match="every training row was dropped"):
        train_adapter(
            demo_dataset,
            tiny_causal,
            tmp_path / "f",
            train=TrainConfig(max_steps=2, max_target_length=1),
            progress=False,
        )
    assert not any((tmp_path / name / "adapter").exists() for name in "abcdef")


def test_checkpoints_of_another_config_or_dataset_are_set_aside_not_resumed(
    demo_dataset, tiny_causal, tmp_path, caplog
):
    out = tmp_path / "run"
    config = TrainConfig(max_steps=4, save_every=2, batch_size=8, logging_steps=1)
    options = {"lora": LoraConfig(r=8), "progress": False}
    train_adapter(demo_dataset, tiny_causal, out, train=config, **options)
    assert (out / "checkpoints" / "step-2").exists()  # left behind, as by a killed run
    (out / "tracking").mkdir()  # as train.report_to leaves it
    (out / "tracking" / "events").write_text("old run")

    # Before: the new run resumed the old one's step-2 state (optimizer, schedule, step
    # count) and trained steps 3-4 only, under another learning rate.
    changed = config.model_copy(update={"learning_rate": 5e-3})
    train_adapter(demo_dataset, tiny_causal, out, train=changed, **options)
    assert [e["step"] for e in _log(out) if "loss" in e] == [1, 2, 3, 4]
    assert "train.learning_rate" in caplog.text and "not resumed" in caplog.text
    stale = list((out / ".stale").glob("checkpoints.*/step-2/trainer_state.json"))
    assert len(stale) == 1  # set aside, never deleted
    assert [p.read_text() for p in (out / ".stale").glob("tracking*/events")] == ["old run"]

    # Other rows (one predictor's only) are another dataset: also a fresh start.
    caplog.clear()
    train_adapter(demo_dataset, tiny_causal, out, train=changed, predictors=["classify"], **options)
    assert [e["step"] for e in _log(out) if "loss" in e] == [1, 2, 3, 4]
    assert "predictors" in caplog.text


def test_length_grouped_batches_are_a_function_of_seed_and_epoch():
    lengths = [5, 50, 7, 48, 6, 49, 8, 47] * 8
    a = length_grouped_batches(lengths, 8, seed=1, epoch=0)
    assert a == length_grouped_batches(lengths, 8, seed=1, epoch=0)
    assert a != length_grouped_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a]
    assert max(spread) <= 3  # long and short rows are not mixed


def test_padding_free_batch_gives_the_padded_loss(demo_dataset, tiny_causal):
    from datasets import load_from_disk

    student = load_student(tiny_causal)
    rows = load_from_disk(str(Path(demo_dataset) / "data"))["train"].select(range(4))
    features, _ = tokenize_rows(rows, student.tokenizer, kind="causal")
    model = student.model.eval()
    pad = student.tokenizer.pad_token_id
    with torch.no_grad():
        padded = model(**collate_padded(features, pad, "causal"))
        flat = model(**collate_padding_free(features, pad, "causal"))
    # Same tokens predicted from the same contexts: rows do not attend across each other.
    assert torch.allclose(padded.loss, flat.loss, atol=1e-4)


def _driver(dataset, student, out, steps, save_every, mode="lora"):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return [
        sys.executable,
        str(DRIVER),
        str(dataset),
        str(student),
        str(out),
        str(steps),
        str(save_every),
        mode,
    ], env


def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint(
    demo_dataset, tiny_causal, tmp_path
):
    out = tmp_path / "run"
    cmd, env = _driver(demo_dataset, tiny_causal, out, 40, 4)
    for kill in range(2):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        wanted = 4 * (kill + 1)
        while (
            time.time() < deadline
            and not (out / "checkpoints" / f"step-{wanted}" / "trainer_state.json").exists()
        ):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps_before = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"steps": 40' in done.stdout
    log = [e for e in _log(out) if "loss" in e]
    resumed = [e["step"] for e in log]
    # The last run started after the newest checkpoint, not from step 1.
    assert resumed[-(40 - steps_before) :] == list(range(steps_before + 1, 41))
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_two_processes_on_gloo_through_accelerate_launch(demo_dataset, tiny_causal, tmp_path):
    cmd, env = _driver(demo_dataset, tiny_causal, tmp_path / "run", 4, 2)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *cmd[1:],
    ]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The two processes share stdout, so their lines may interleave: find the JSON objects.
    assert done.stdout.count("RESULT") == 2, done.stdout[-3000:]
    found = re.findall(r'\{"steps": \d+, "world": \d+\}', done.stdout)
    results = [json.loads(m) for m in found]
    assert results == [{"steps": 4, "world": 2}, {"steps": 4, "world": 2}]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
