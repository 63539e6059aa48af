"""BetterTogether: a prompt step and a weight step composed by a strategy string, each from
the previous step's program; the weight step trains on traces of the prompt-optimized
program; every step is scored and the best program is kept."""

from __future__ import annotations

import json

import pytest
from test_gepa import TRAIN, VAL, _student, metric, task

import apprentice as ap
from apprentice.optimize.together import parse_strategy
from apprentice.train.tiny import make_tiny_student, task_corpus


def _shout(signature, inputs):
    return {"new_instruction": "Repeat the word. Answer in uppercase."}


def test_p_then_w_trains_on_the_prompt_optimized_program_and_keeps_the_best(tmp_path):
    corpus = task_corpus(_student(), TRAIN, ap.ScriptedLM(task))
    student = make_tiny_student(
        "causal", corpus, tmp_path / "student", hidden_size=32, num_layers=1, vocab_size=300
    )
    weights = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, max_steps=2, batch_size=4),
        serve={"max_new_tokens": 8},
    )
    prompts = ap.GEPA(metric, reflection_lm=ap.ScriptedLM(_shout), max_metric_calls=40)
    optimizer = ap.BetterTogether(metric, prompt_optimizer=prompts, weight_optimizer=weights)
    best = optimizer.compile(_student(), trainset=TRAIN, valset=VAL, strategy="p -> w")

    steps = [(s.index, s.step) for s in optimizer.step_scores]
    assert steps == [(0, "start"), (1, "p"), (2, "w")]
    scores = [s.score for s in optimizer.step_scores]
    # The prompt step fixes the instruction (1.0); two training steps of a random-init
    # student do not learn the task, so the prompt step's program is the one kept.
    assert scores[:2] == [0.0, 1.0] and scores[2] < 1.0
    assert best is optimizer.programs[1] and best.candidate_scores == optimizer.step_scores
    assert best.say.signature.instructions == "Repeat the word. Answer in uppercase."
    # The weight step's rows are the prompt-optimized program's: its instruction in every
    # prompt, and the uppercase answers it gives.
    from apprentice.dataset import load_dataset_dir

    data, _ = load_dataset_dir(tmp_path / "run" / "dataset")
    rows = list(data["train"]) + list(data["validation"])
    assert len(rows) == len(TRAIN)
    assert all("Answer in uppercase." in json.dumps(r["messages"]) for r in rows)
    assert all(r["completion"].split("\n", 1)[1].strip().isupper() for r in rows)
    # The weight step's program is bound to the trained student.
    trained = optimizer.programs[2]
    assert type(trained.say.lm).__name__ == "LocalLM"


def test_the_strategy_is_checked_before_anything_runs():
    assert parse_strategy("p -> w -> p") == ["p", "w", "p"]
    assert parse_strategy("w->p") == ["w", "p"]
    for bad in ("", "p -> x", "p w", "p -> -> w"):
        with pytest.raises(ValueError, match="is not a chain of 'p'"):
            parse_strategy(bad)
    optimizer = ap.BetterTogether(metric)  # the default prompt optimizer, no weight optimizer
    with pytest.raises(ValueError, match="has a weight step but no weight_optimizer"):
        optimizer.compile(_student(), trainset=TRAIN, strategy="p -> w")
