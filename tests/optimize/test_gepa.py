"""GEPA: instructions evolved by a reflection LM (ScriptedLMs here), searched by the `gepa`
package's engine through apprentice's adapter. A better instruction is kept, a worse one
never; the metric's feedback reaches the proposer; a failing run scores 0 and the search
goes on."""

from __future__ import annotations

import pytest

import apprentice as ap

SEED_INSTRUCTION = "Repeat the word."


class Echo(ap.Module):
    def __init__(self) -> None:
        self.say = ap.Predict(ap.Signature("word -> answer", SEED_INSTRUCTION))

    def forward(self, word: str) -> ap.Prediction:
        return ap.Prediction(answer=self.say(word=word).answer)


def _data(words):
    return [ap.Example(word=w, answer=w.upper()).with_inputs("word") for w in words]


TRAIN = _data(["apple", "pear", "plum", "fig", "kiwi", "lime"])
VAL = _data(["grape", "melon", "peach", "berry"])


def metric(example, prediction):
    return prediction.answer == example.answer


def task(signature, inputs):
    """The student: shouts only when its instruction says so."""
    word = inputs["word"]
    if word == "boom":
        raise RuntimeError("the student broke on this word")
    return {"answer": word.upper() if "uppercase" in signature.instructions else word}


def _student():
    program = Echo()
    program.set_lm(ap.ScriptedLM(task))
    return program


def test_a_better_instruction_is_found_and_kept():
    seen = []

    def proposer(signature, inputs):
        seen.append(inputs)
        return {"new_instruction": inputs["current_instruction"] + " Answer in uppercase."}

    optimizer = ap.GEPA(metric, reflection_lm=ap.ScriptedLM(proposer), max_metric_calls=60)
    compiled = optimizer.compile(_student(), trainset=TRAIN, valset=VAL)

    assert compiled.say.signature.instructions == "Repeat the word. Answer in uppercase."
    evaluate = ap.Evaluate(devset=VAL, metric=metric, display_progress=False)
    assert evaluate(_student()).score == 0.0
    assert evaluate(compiled).score == 1.0
    assert [c.score for c in optimizer.candidates] == [0.0, 1.0]
    assert compiled.candidate_scores == optimizer.candidates
    # The proposer read the current instruction and what went wrong, with the expected answer.
    assert seen[0]["current_instruction"] == SEED_INSTRUCTION
    assert '"word": "' in seen[0]["examples"] and "The expected answer" in seen[0]["examples"]
    assert 0 < optimizer.total_metric_calls <= 60 + len(VAL)


def test_a_worse_instruction_is_never_kept():
    proposed = []

    def half_right(signature, inputs):
        word = inputs["word"]
        if "lowercase" in signature.instructions:
            return {"answer": word}
        return {"answer": word.upper() if len(word) % 2 else word}

    def bad_proposer(signature, inputs):
        proposed.append(1)
        return {"new_instruction": "Answer in lowercase."}

    program = Echo()
    program.set_lm(ap.ScriptedLM(half_right))
    optimizer = ap.GEPA(metric, reflection_lm=ap.ScriptedLM(bad_proposer), max_metric_calls=40)
    compiled = optimizer.compile(program, trainset=TRAIN, valset=VAL)
    assert proposed  # proposals were made, and each was worse on its minibatch
    assert compiled.say.signature.instructions == SEED_INSTRUCTION
    assert [c.index for c in optimizer.candidates] == [0]


def test_the_metrics_feedback_reaches_the_proposer_and_a_failing_run_does_not_stop_it():
    seen = []

    def with_feedback(example, prediction):
        right = prediction.answer == example.answer
        return ap.Prediction(score=float(right), feedback="" if right else "SHOUT IT")

    def proposer(signature, inputs):
        seen.append(inputs["examples"])
        return {"new_instruction": "Answer in uppercase."}

    train = [*TRAIN, *_data(["boom"])]
    optimizer = ap.GEPA(
        with_feedback,
        reflection_lm=ap.ScriptedLM(proposer),
        max_metric_calls=80,
        reflection_minibatch_size=7,
        examples_per_proposal=7,
    )
    compiled = optimizer.compile(_student(), trainset=train, valset=VAL)
    assert compiled.say.signature.instructions == "Answer in uppercase."
    assert "Feedback: SHOUT IT" in seen[0]
    assert "The program failed: RuntimeError: the student broke on this word" in seen[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one budget"),
        ({"max_metric_calls": 10, "max_full_evals": 2}, "exactly one budget"),
        ({"max_metric_calls": 0}, "max_metric_calls must be a positive integer, got 0"),
        ({"max_full_evals": 1, "reflection_lm": None}, "needs a reflection_lm"),
    ],
)
def test_bad_settings_are_refused_by_name(options, message):
    options = {"reflection_lm": ap.ScriptedLM(task), **options}
    with pytest.raises(ValueError, match=message):
        ap.GEPA(metric, **options)
