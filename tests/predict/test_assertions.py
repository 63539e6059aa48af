"""Assert / Suggest: re-runs with feedback, the limit, and how the trace records them."""

from __future__ import annotations

import asyncio
import logging

import pytest

import apprentice as ap
from apprentice.traces.capture import capture, run_traced

LONG = "everything about the question and much more besides"


def stubborn(signature, inputs):
    """A teacher that never fixes its query, whatever the feedback."""
    return {"query": LONG}


def learner(signature, inputs):
    """A teacher that writes a long query first and a short one once told why."""
    if "feedback" in inputs:
        return {"query": inputs["question"].split()[-1]}
    return {"query": LONG}


class Search(ap.Module):
    def __init__(self, hard: bool = False) -> None:
        self.generate_query = ap.Predict("question -> query")
        self.hard = hard

    def forward(self, question: str) -> ap.Prediction:
        query = self.generate_query(question=question).query
        check = ap.Assert if self.hard else ap.Suggest
        check(len(query) <= 20, "Query should be at most 20 characters", target=self.generate_query)
        return ap.Prediction(query=query)


def test_suggest_reruns_the_target_with_its_past_output_and_the_feedback():
    lm = ap.ScriptedLM(learner)
    program = Search()
    program.set_lm(lm)
    assert program(question="where is Paris").query == "Paris"
    assert len(lm.history) == 2
    retry = lm.history[-1].request
    prompt = retry.messages[-1]["content"]
    # The re-run's prompt carries what was rejected and why, as two extra inputs.
    assert "[[past_query]]\n" + LONG in prompt
    assert "[[feedback]]\nQuery should be at most 20 characters" in prompt
    assert list(retry.meta.signature.input_fields) == ["question", "past_query", "feedback"]
    # The program's own predictor is unchanged: the next run starts without feedback.
    assert list(program.generate_query.signature.input_fields) == ["question"]


def test_assert_raises_after_the_limit_naming_the_message():
    lm = ap.ScriptedLM(stubborn)
    program = Search(hard=True)
    program.set_lm(lm)
    with pytest.raises(ap.AssertionFailed, match="at most 20 characters.*after 2 re-run") as err:
        program(question="where is Paris")
    assert err.value.retries == 2 and err.value.message.startswith("Query should")
    assert len(lm.history) == 3  # the first call and max_backtracks=2 re-runs
    with ap.context(max_backtracks=4), pytest.raises(ap.AssertionFailed):
        program(question="where is Paris")
    assert len(lm.history) == 3 + 5


def test_suggest_logs_and_goes_on_after_the_limit(caplog):
    lm = ap.ScriptedLM(stubborn)
    program = Search()
    program.set_lm(lm)
    with caplog.at_level(logging.WARNING, logger="apprentice.predict.assertions"):
        prediction = program(question="where is Paris")
    assert prediction.query == LONG  # the program went on with what it had
    assert len(lm.history) == 3
    assert "Suggest failed" in caplog.text and "at most 20 characters" in caplog.text


def test_max_backtracks_zero_turns_backtracking_off():
    lm = ap.ScriptedLM(learner)
    program = Search()
    program.set_lm(lm)
    with ap.context(max_backtracks=0):
        assert program(question="where is Paris").query == LONG
    assert len(lm.history) == 1
    with pytest.raises(TypeError, match="max_backtracks=-1"):
        ap.configure(max_backtracks=-1)


def test_outside_a_module_suggest_logs_and_assert_raises(caplog):
    assert ap.Suggest(True, "fine") is True
    with caplog.at_level(logging.WARNING):
        assert ap.Suggest(False, "not fine") is False
    assert "not fine" in caplog.text
    with pytest.raises(ap.AssertionFailed, match="not fine"):
        ap.Assert(False, "not fine")


def test_rejected_attempts_are_marked_in_the_trace():
    program = Search()
    program.set_lm(ap.ScriptedLM(learner))
    trace = run_traced(program, ap.Example(question="where is Paris").with_inputs("question"))
    assert trace.ok and trace.prediction == {"query": "Paris"}
    first, retry = trace.steps
    assert first.rejected and first.output == {"query": LONG}
    assert first.rejection == "Suggest failed: Query should be at most 20 characters"
    assert not retry.rejected and retry.rejection is None
    assert retry.inputs["feedback"].startswith("Query should") and retry.output == {
        "query": "Paris"
    }
    # The marks survive the store's JSON round trip.
    again = ap.Trace.from_dict(trace.to_dict())
    assert [s.rejected for s in again.steps] == [True, False]


class TwoHops(ap.Module):
    """One predictor called once per hop; the second hop must not repeat the first."""

    def __init__(self) -> None:
        self.generate_query = ap.Predict("question, hop: int -> query")
        self.answer = ap.Predict("question, queries: list[str] -> answer")

    def forward(self, question: str) -> ap.Prediction:
        queries: list[str] = []
        for hop in range(2):
            query = self.generate_query(question=question, hop=hop).query
            ap.Suggest(query not in queries, f"Query should differ from {queries}")
            queries.append(query)
        return ap.Prediction(answer=self.answer(question=question, queries=queries).answer)


def repeater(signature, inputs):
    if "answer" in signature.output_fields:
        return {"answer": " + ".join(inputs["queries"])}
    if "feedback" in inputs:
        return {"query": "second"}
    return {"query": "first"}


def test_feedback_goes_to_the_call_that_failed_and_other_steps_of_the_attempt_are_rejected():
    program = TwoHops()
    lm = ap.ScriptedLM(repeater)
    program.set_lm(lm)
    with capture(program) as steps:
        prediction = program(question="q")
    assert prediction.answer == "first + second"
    # Attempt 1: hop 0, hop 1 (rejected, the target by default: the last call). Attempt 2:
    # hop 0 again without feedback, hop 1 with it, then the answer.
    assert [(s.predictor, s.rejected) for s in steps] == [
        ("generate_query", True),
        ("generate_query", True),
        ("generate_query", False),
        ("generate_query", False),
        ("answer", False),
    ]
    assert steps[0].rejection.startswith("re-run after Suggest failed")
    assert steps[1].rejection.startswith("Suggest failed: Query should differ")
    assert "feedback" not in steps[2].inputs and steps[3].inputs["past_query"] == "first"


def test_async_calls_backtrack_too():
    program = Search()
    lm = ap.ScriptedLM(learner)
    program.set_lm(lm)
    prediction = asyncio.run(program.acall(question="where is Paris"))
    assert prediction.query == "Paris" and len(lm.history) == 2


def test_a_bad_target_and_a_clashing_field_are_named():
    class Bad(ap.Module):
        def __init__(self, target) -> None:
            self.generate_query = ap.Predict("question, feedback -> query")
            self.target = target

        def forward(self, question):
            query = self.generate_query(question=question, feedback="").query
            ap.Suggest(False, "always", target=self.target)
            return ap.Prediction(query=query)

    bad = Bad("generate_query")
    bad.set_lm(ap.ScriptedLM(learner))
    with pytest.raises(TypeError, match="target='generate_query' is not a predictor"):
        bad(question="q")
    clash = Bad(None)
    clash.set_lm(ap.ScriptedLM(learner))
    with pytest.raises(ap.SignatureError, match="already has a field 'feedback'"):
        clash(question="q")


def test_dspy_spellings_say_what_to_write():
    with pytest.raises(TypeError, match="target_module is target= here"):
        ap.Suggest(False, "msg", target_module=None)
    with pytest.raises(AttributeError, match=r"backtracking is on.*max_backtracks=N"):
        ap.assert_transform_module  # noqa: B018
