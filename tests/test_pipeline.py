"""One pipeline behind `apprentice distill` and BootstrapFinetune: the same stages, hashes,
resume and binding; serving options re-bind the student without retraining it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.run import Run
from tiny_run import RECIPE, SHORT


def _lm_config(root: Path) -> dict:
    saved = json.loads((root / "program.json").read_text())
    configs = [p["lm"] for p in saved["predictors"].values()]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 1
    return configs[0]


def _stages(run: Run, names) -> dict[str, str]:
    return {name: getattr(run, name)().status for name in names}


def test_a_serving_change_rebinds_the_student_without_retraining_it(tmp_path):
    root = tmp_path / "run"
    first = Run.open(RECIPE, overrides=SHORT, run_dir=root, progress=False)
    assert _stages(first, ("bootstrap", "dataset", "train", "bind")) == dict.fromkeys(
        ("bootstrap", "dataset", "train", "bind"), "ran"
    )
    assert _lm_config(root)["max_new_tokens"] == 64
    weights = sorted((root / "adapters").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]

    # Before: the train stage's hash held the serve section, so this retrained.
    again = Run.open(root, overrides=["serve.max_new_tokens=32"], progress=False)
    assert _stages(again, ("dataset", "train", "bind")) == {
        "dataset": "reused",
        "train": "reused",
        "bind": "ran",
    }
    assert _lm_config(root)["max_new_tokens"] == 32
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    # `apprentice eval --set serve...` scores the student served that way: eval binds again
    # (before: it scored the program still bound with the old settings).
    overrides = ["serve.max_new_tokens=24", "eval.teacher=false", "eval.untrained=false"]
    scored = Run.open(root, overrides=overrides, progress=False)
    assert scored.eval().status == "ran"
    assert [o.stage for o in scored.outcomes] == ["bind", "eval"]
    assert _lm_config(root)["max_new_tokens"] == 24
    # A training change does retrain (and rebinds).
    third = Run.open(root, overrides=["train.learning_rate=0.001"], progress=False)
    assert _stages(third, ("train", "bind")) == {"train": "ran", "bind": "ran"}
    assert [p.stat().st_mtime_ns for p in weights] != stamps


@pytest.fixture
def counted_training(monkeypatch):
    import apprentice.train.sft as sft

    calls = []
    real = sft.train_adapter

    def train(*args, **kwargs):
        calls.append(kwargs["name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sft, "train_adapter", train)
    return calls


def test_bootstrap_finetune_runs_the_same_stages_and_reuses_them(tmp_path, counted_training):
    from apprentice.train.tiny import make_tiny_student, task_corpus

    trainset = make_examples(8)
    lm = ap.ScriptedLM(teacher)
    student = make_tiny_student(
        "causal",
        task_corpus(TicketTriage(), trainset, lm),
        tmp_path / "student",
        hidden_size=32,
        num_layers=1,
        vocab_size=400,
    )

    def compile_once(**serve):
        optimizer = ap.BootstrapFinetune(
            metric=metric,
            threshold=1.0,
            student=student,
            run_dir=tmp_path / "run",
            progress=False,
            concurrency=2,
            train=ap.TrainConfig(full_finetune=True, max_steps=2, batch_size=4),
            serve=serve,
        )
        return optimizer.compile(TicketTriage(), trainset=trainset, teacher=lm)

    compiled = compile_once(max_new_tokens=9)
    state = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert list(state) == ["bootstrap", "dataset", "train", "bind"]
    assert all(entry["status"] == "done" for entry in state.values())
    assert compiled.classify.lm.max_new_tokens == 9 and counted_training == ["multitask"]

    # Same run_dir, other serving options: nothing is trained again, the binding follows.
    rebound = compile_once(max_new_tokens=12)
    assert counted_training == ["multitask"]
    assert rebound.classify.lm.max_new_tokens == 12
    assert _lm_config(tmp_path / "run")["max_new_tokens"] == 12


def test_train_refuses_a_dataset_whose_rebuild_was_killed(tmp_path, monkeypatch, counted_training):
    from datasets import Dataset

    from apprentice.dataset import load_dataset_dir
    from apprentice.recipe import RecipeError

    root = tmp_path / "run"
    run = Run.open(RECIPE, overrides=SHORT, run_dir=root, progress=False)
    run.bootstrap()
    run.dataset()
    _, old = load_dataset_dir(root / "dataset")

    class Killed(BaseException):
        pass

    real = Dataset.save_to_disk

    def save_then_die(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        raise Killed(path)  # after the first split is on disk

    monkeypatch.setattr(Dataset, "save_to_disk", save_then_die)
    rebuild = Run.open(root, overrides=[*SHORT, "dataset.val_fraction=0.5"], progress=False)
    with pytest.raises(Killed):
        rebuild.dataset()
    monkeypatch.setattr(Dataset, "save_to_disk", real)

    again = Run.open(root, overrides=[*SHORT, "dataset.val_fraction=0.5"], progress=False)
    with pytest.raises(
        RecipeError, match="the dataset stage .* did not finish .* 'apprentice data"
    ):
        again.train()  # before: trained on mixed splits, recording the old dataset's hash
    assert counted_training == []
    _, kept = load_dataset_dir(root / "dataset")
    assert kept.content_hash == old.content_hash  # the old dataset is whole, not mixed
    assert again.dataset().status == "resumed"  # the same inputs, built again whole
    _, new = load_dataset_dir(root / "dataset")
    assert new.val_fraction == 0.5 and new.content_hash != old.content_hash


def test_the_dataset_manifest_counts_the_rows_too_long_for_the_student(tmp_path):
    from apprentice.cli import _short
    from apprentice.dataset import load_dataset_dir
    from apprentice.train.tiny import make_tiny_student, task_corpus

    # A student folder on this machine: its tokenizer counts the rows when the dataset is built.
    corpus = task_corpus(TicketTriage(), make_examples(8), ap.ScriptedLM(teacher))
    student = make_tiny_student(
        "causal", corpus, tmp_path / "student", hidden_size=32, num_layers=1, vocab_size=400
    )
    # 200 tokens: the extract prompts fit, the longer classify prompts (ChainOfThought) do not.
    overrides = [
        *SHORT[:3],
        f"student.model={student}",
        "student.tiny=null",
        "train.max_steps=1",
        "train.batch_size=4",
        "train.max_length=200",
    ]
    run = Run.open(RECIPE, overrides=overrides, run_dir=tmp_path / "run", progress=False)
    run.bootstrap()
    summary = run.dataset().summary
    _, manifest = load_dataset_dir(tmp_path / "run" / "dataset")
    assert manifest.lengths == {
        "checked": True,
        "max_length": 200,
        "max_target_length": 256,
        "splits": {
            "train": {"rows": 14, "kept": 7, "prompts_too_long": 7, "targets_too_long": 0},
            "validation": {"rows": 2, "kept": 1, "prompts_too_long": 1, "targets_too_long": 0},
        },
    }
    assert summary["too_long"] == {"train": 7, "validation": 1}
    assert _short("dataset", summary).endswith(
        "too long for the student (training drops them): train 7, validation 1"
    )
    # Training applies the same rule and drops the same rows.
    metrics = run.train().summary["multitask"]["metrics"]
    assert metrics["rows"] == manifest.lengths["splits"]
    # Another max_length is another count: the dataset stage runs again, its rows unchanged.
    again = Run.open(
        tmp_path / "run", overrides=[*overrides[:-1], "train.max_length=1024"], progress=False
    )
    assert again.dataset().status == "ran"
    _, rebuilt = load_dataset_dir(tmp_path / "run" / "dataset")
    assert rebuilt.content_hash == manifest.content_hash
    assert {s: r["kept"] for s, r in rebuilt.lengths["splits"].items()} == {
        "train": 14,
        "validation": 2,
    }


def test_a_tiny_students_rows_are_counted_by_training_alone(tmp_path):
    from apprentice.dataset import load_dataset_dir

    run = Run.open(RECIPE, overrides=SHORT, run_dir=tmp_path / "run", progress=False)
    run.bootstrap()
    assert run.dataset().summary["too_long"] is None
    _, manifest = load_dataset_dir(tmp_path / "run" / "dataset")
    assert manifest.lengths == {
        "checked": False,
        "why": "a tiny student's tokenizer is trained in the train stage",
    }


def test_the_students_loading_options_reach_binding_and_retrain_when_changed(tmp_path):
    root = tmp_path / "run"
    eager = ["student.attn_implementation=eager"]
    first = Run.open(RECIPE, overrides=[*SHORT, *eager], run_dir=root, progress=False)
    assert _stages(first, ("bootstrap", "dataset", "train", "bind"))["train"] == "ran"
    assert _lm_config(root)["loading"] == {"attn_implementation": "eager"}
    manifest = json.loads(next((root / "adapters").rglob("manifest.json")).read_text())
    assert manifest["base_model_options"] == {"attn_implementation": "eager"}
    program = first.compiled_program()
    [lm] = {id(p.lm.engine): p.lm for _, p in program.named_predictors()}.values()
    assert lm.engine.network.config._attn_implementation == "eager"
    # Another dtype for the base is another training run; the same options are reused.
    same = Run.open(root, progress=False)
    assert _stages(same, ("dataset", "train")) == {"dataset": "reused", "train": "reused"}
    bf16 = Run.open(root, overrides=["student.dtype=bfloat16"], progress=False)
    assert _stages(bf16, ("dataset", "train")) == {"dataset": "reused", "train": "ran"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without CUDA")
def test_4bit_is_refused_before_the_teacher_is_paid(tmp_path):
    run = Run.open(
        RECIPE, overrides=[*SHORT, "student.load_in_4bit=true"], run_dir=tmp_path, progress=False
    )
    with pytest.raises(ValueError, match="student.load_in_4bit.*CUDA"):
        run.bootstrap()
    assert not (tmp_path / "traces" / "traces.jsonl").exists()


def test_a_tracker_without_its_package_stops_the_run_before_the_teacher_is_paid(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    run = Run.open(
        RECIPE,
        overrides=[*SHORT, "train.report_to=wandb"],
        run_dir=tmp_path / "run",
        progress=False,
    )
    with pytest.raises(ValueError, match=r"pip install wandb .*apprentice\[tracking\]"):
        run.bootstrap()
    assert not (tmp_path / "run" / "traces").exists()
