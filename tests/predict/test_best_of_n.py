"""BestOfN and Refine: attempts as new rollouts, stop at the threshold, keep the best."""

from __future__ import annotations

import pytest

import apprentice as ap
from apprentice.traces.capture import run_traced

SCORES = {"poor": 0.2, "good": 0.7, "great": 1.0, "fine": 0.5}


def in_turn(*answers):
    """A teacher that writes the given answers one call after another."""
    queue = list(answers)

    def script(signature, inputs):
        return {"answer": queue.pop(0)}

    return script


def reward(inputs, prediction):
    return SCORES[prediction.answer]


def make(lm, cls=ap.BestOfN, **options):
    qa = ap.Predict("question -> answer", lm=lm)
    return cls(qa, N=options.pop("N", 4), reward_fn=reward, threshold=0.9, **options)


def test_stops_at_the_threshold():
    lm = ap.ScriptedLM(in_turn("poor", "great", "good", "good"))
    best = make(lm)
    assert best(question="q").answer == "great"
    assert len(lm.history) == 2 and best.scores == [0.2, 1.0]
    first, second = (entry.request for entry in lm.history)
    # Attempt 0 samples as configured; attempt 1 is a new rollout at the BestOfN temperature,
    # so a cache or a deterministic server cannot hand back the first reply.
    assert (first.rollout, first.temperature) == (0, None)
    assert (second.rollout, second.temperature) == (1, 1.0)
    assert lm.cache_key(first) != lm.cache_key(second)


def test_without_a_passing_attempt_the_best_one_wins_and_the_rest_are_rejected():
    lm = ap.ScriptedLM(in_turn("poor", "good", "fine"))
    best = make(lm, N=3)
    trace = run_traced(best, ap.Example(question="q").with_inputs("question"))
    assert trace.prediction == {"answer": "good"} and best.scores == [0.2, 0.7, 0.5]
    assert [s.rejected for s in trace.steps] == [True, False, True]
    assert trace.steps[0].rejection == (
        "not chosen by BestOfN: BestOfN attempt 0 scored 0.2, BestOfN attempt 1 scored 0.7"
    )
    assert {s.predictor for s in trace.steps} == {"module"}  # found in the program


def test_a_failing_attempt_is_one_bad_sample():
    answers = iter(["boom", "great"])

    def script(signature, inputs):
        answer = next(answers)
        if answer == "boom":
            raise RuntimeError("endpoint hiccup")
        return {"answer": answer}

    best = make(ap.ScriptedLM(script))
    assert best(question="q").answer == "great" and best.scores == [None, 1.0]
    always = make(ap.ScriptedLM(lambda s, i: 1 / 0), N=2)
    with pytest.raises(RuntimeError, match="all 2 attempts of BestOfN failed.*division by zero"):
        always(question="q")


def test_refine_passes_the_previous_output_and_feedback_on():
    lm = ap.ScriptedLM(in_turn("poor", "good", "great"))
    qa = ap.Predict("question -> answer", lm=lm)

    def critic(inputs, prediction):
        return SCORES[prediction.answer], f"{prediction.answer!r} is not enough"

    refine = ap.Refine(qa, N=4, reward_fn=critic, threshold=0.9)
    assert refine(question="q").answer == "great"
    prompts = [entry.request.messages[-1]["content"] for entry in lm.history]
    assert "feedback" not in prompts[0]
    assert (
        "[[past_answer]]\npoor" in prompts[1] and "[[feedback]]\n'poor' is not enough" in prompts[1]
    )
    assert "[[past_answer]]\ngood" in prompts[2]
    # Without a feedback text, the score is the feedback.
    lm2 = ap.ScriptedLM(in_turn("poor", "great"))
    plain = make(lm2, cls=ap.Refine)
    plain(question="q")
    assert (
        "that answer scored 0.2; the goal is 0.9" in lm2.history[-1].request.messages[-1]["content"]
    )


def test_bad_arguments_are_named():
    qa = ap.Predict("question -> answer")
    with pytest.raises(ValueError, match="N=0 must be a positive integer"):
        ap.BestOfN(qa, N=0, reward_fn=reward, threshold=1.0)
    with pytest.raises(TypeError, match="reward_fn"):
        ap.BestOfN(qa, N=2, reward_fn=None, threshold=1.0)
    with pytest.raises(ValueError, match="is not a predictor of"):
        ap.Refine(qa, N=2, reward_fn=reward, threshold=1.0, target=ap.Predict("a -> b"))
    odd = ap.BestOfN(
        ap.Predict("question -> answer", lm=ap.ScriptedLM(in_turn("poor"))),
        N=1,
        reward_fn=lambda i, p: "high",
        threshold=1.0,
    )
    with pytest.raises(TypeError, match="reward_fn returned 'high'"):
        odd(question="q")
