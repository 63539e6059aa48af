"""Evaluate: parallel scoring, failure budget, per-example results and their files."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest

import apprentice as ap
from apprentice.evaluate import EvaluationError, EvaluationResult

RIGHT = {0, 2, 5, 7}  # the examples the scripted teacher gets right


def devset(n: int = 10) -> list[ap.Example]:
    return [ap.Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(n)]


def partly_right(signature, inputs):
    i = int(inputs["question"][1:])
    return {"answer": f"a{i}" if i in RIGHT else "wrong"}


class QA(ap.Module):
    """A user-written program: one predictor behind a custom forward."""

    def __init__(self):
        self.answer = ap.Predict("question -> answer")

    def forward(self, question):
        return self.answer(question=question)


def test_score_is_the_mean_over_the_devset_and_results_are_in_order():
    ap.configure(lm=ap.ScriptedLM(partly_right))
    result = ap.Evaluate(
        devset=devset(10), metric=ap.answer_exact_match, num_threads=4, display_progress=False
    )(QA())
    assert isinstance(result, EvaluationResult)
    assert result.score == pytest.approx(len(RIGHT) / 10)
    assert float(result) == pytest.approx(0.4)
    assert result.errors == 0
    assert [r.index for r in result.results] == list(range(10))
    for r in result.results:
        assert r.example.question == f"q{r.index}"
        assert r.prediction.answer == (f"a{r.index}" if r.index in RIGHT else "wrong")
        assert r.score == (1.0 if r.index in RIGHT else 0.0)
        assert r.error is None


def test_metric_given_at_call_time_replaces_the_default():
    ap.configure(lm=ap.ScriptedLM(partly_right))
    evaluate = ap.Evaluate(devset=devset(10), metric=ap.answer_exact_match, display_progress=False)
    assert evaluate(QA(), metric=lambda example, pred: 1).score == 1.0


def test_metric_with_or_without_trace_parameter():
    ap.configure(lm=ap.ScriptedLM(partly_right))
    seen = []

    def needs_trace(example, pred, trace):
        seen.append(trace)
        return True

    evaluate = ap.Evaluate(devset=devset(3), metric=needs_trace, display_progress=False)
    assert evaluate(QA()).score == 1.0
    assert seen == [None, None, None]
    two_args = ap.Evaluate(devset=devset(3), metric=lambda e, p: 0.5, display_progress=False)
    assert two_args(QA()).score == 0.5


def test_runs_num_threads_examples_at_once():
    in_flight, peak = 0, 0
    lock = threading.Lock()
    # The barrier only opens when 8 examples are running together; 16 examples pass it
    # in two waves. A run with fewer threads would time out and record errors.
    barrier = threading.Barrier(8, timeout=5)

    def program(question):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        barrier.wait()
        time.sleep(0.1)
        with lock:
            in_flight -= 1
        return ap.Prediction(answer=question.replace("q", "a"))

    start = time.perf_counter()
    result = ap.Evaluate(
        devset=devset(16), metric=ap.answer_exact_match, num_threads=8, display_progress=False
    )(program)
    elapsed = time.perf_counter() - start
    assert result.errors == 0 and result.score == 1.0
    assert peak == 8
    assert elapsed < 16 * 0.1 / 2  # sequential would take 1.6 s; two waves take ~0.2 s


def _flaky(signature, inputs):
    i = int(inputs["question"][1:])
    if i % 3 == 1:
        return "not a number at all"  # unparseable for `answer: int`
    return {"answer": i}


def test_failing_examples_score_failure_score_and_the_run_continues():
    class Flaky(ap.Module):
        def __init__(self):
            self.predict = ap.Predict("question -> answer: int")

        def forward(self, question):
            if question == "q8":
                raise RuntimeError("tool backend down for q8")
            return self.predict(question=question)

    examples = [ap.Example(question=f"q{i}", answer=i).with_inputs("question") for i in range(9)]
    ap.configure(lm=ap.ScriptedLM(_flaky))
    result = ap.Evaluate(
        devset=examples,
        metric=lambda e, p: p.answer == e.answer,
        num_threads=3,
        max_errors=10,
        failure_score=0.25,
        display_progress=False,
    )(Flaky())
    parse_failures = {1, 4, 7}
    assert len(result.results) == 9
    assert result.errors == 4
    for r in result.results:
        if r.index in parse_failures:
            assert r.error.startswith("ParseError")
            assert "not a number at all" in r.error
            assert r.prediction is None and r.score == 0.25
        elif r.index == 8:
            assert r.error == "RuntimeError: tool backend down for q8"
            assert r.score == 0.25
        else:
            assert r.error is None and r.score == 1.0 and r.prediction.answer == r.index
    # 5 right (1.0 each) + 4 failures (0.25 each) over 9 examples
    assert result.score == pytest.approx((5 * 1.0 + 4 * 0.25) / 9)


def test_exactly_max_errors_failures_is_allowed():
    def program(question):
        if question in {"q1", "q3", "q5"}:
            raise ValueError(f"bad {question}")
        return ap.Prediction(answer=question.replace("q", "a"))

    result = ap.Evaluate(
        devset=devset(6), metric=ap.answer_exact_match, max_errors=3, display_progress=False
    )(program)
    assert result.errors == 3
    assert result.score == pytest.approx(0.5)


def test_more_failures_than_max_errors_raises_naming_the_count():
    calls = []

    def program(question):
        calls.append(question)
        raise ValueError(f"cannot answer {question}")

    evaluate = ap.Evaluate(
        devset=devset(10),
        metric=ap.answer_exact_match,
        num_threads=1,
        max_errors=2,
        display_progress=False,
    )
    with pytest.raises(EvaluationError, match=r"3 examples failed, more than max_errors=2") as info:
        evaluate(program)
    assert "the error over budget (example 2): ValueError: cannot answer q2" in str(info.value)
    assert calls == ["q0", "q1", "q2"]
    # the run stopped: the remaining examples were not run
    assert [r.index for r in info.value.results] == [0, 1, 2]
    assert all(r.error for r in info.value.results)


def test_max_errors_stops_a_parallel_run_promptly():
    calls = []
    lock = threading.Lock()

    def program(question):
        with lock:
            calls.append(question)
        raise ValueError(f"cannot answer {question}")

    evaluate = ap.Evaluate(
        devset=devset(200),
        metric=ap.answer_exact_match,
        num_threads=4,
        max_errors=2,
        display_progress=False,
    )
    with pytest.raises(EvaluationError, match=r"more than max_errors=2"):
        evaluate(program)
    # 3 failures trip the budget; at most the 3 other workers were mid-example then
    assert 3 <= len(calls) <= 3 + 3


def test_metric_returning_a_non_number_is_recorded_with_the_value():
    def metric(example, pred):
        return {"q0": "yes", "q1": None, "q2": float("nan"), "q3": True}[example.question]

    result = ap.Evaluate(devset=devset(4), metric=metric, display_progress=False)(
        lambda question: ap.Prediction(answer="x")
    )
    by_index = {r.index: r for r in result.results}
    assert "metric returned 'yes' for example 0; return a number or bool" in by_index[0].error
    assert "metric returned None" in by_index[1].error
    assert "NaN" in by_index[2].error
    assert by_index[3].error is None and by_index[3].score == 1.0
    # the program succeeded, so its prediction is kept for inspection
    assert by_index[0].prediction.answer == "x"
    assert result.errors == 3
    assert result.score == pytest.approx(0.25)


def test_metric_that_raises_is_recorded_as_a_metric_error():
    def metric(example, pred):
        return pred.missing_field

    result = ap.Evaluate(devset=devset(2), metric=metric, display_progress=False)(
        lambda question: ap.Prediction(answer="x")
    )
    assert all(r.error.startswith("metric AttributeError") for r in result.results)
    assert "missing_field" in result.results[0].error


def test_devset_without_with_inputs_is_rejected_at_construction():
    examples = devset(3)
    examples[1] = ap.Example(question="q1", answer="a1")
    with pytest.raises(ValueError, match=r"devset\[1\].*has no input keys.*with_inputs"):
        ap.Evaluate(devset=examples, metric=ap.answer_exact_match)


def test_bad_arguments_name_the_bad_value():
    with pytest.raises(TypeError, match=r"devset\[0\] is dict .*ap.Example\(d\).with_inputs"):
        ap.Evaluate(devset=[{"question": "q"}], metric=ap.answer_exact_match)
    with pytest.raises(TypeError, match="devset must be a list"):
        ap.Evaluate(devset="q0", metric=ap.answer_exact_match)
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1, got 0"):
        ap.Evaluate(devset=devset(1), metric=ap.answer_exact_match, num_threads=0)
    with pytest.raises(ValueError, match="max_errors must be None or an integer >= 0, got -1"):
        ap.Evaluate(devset=devset(1), metric=ap.answer_exact_match, max_errors=-1)
    with pytest.raises(TypeError, match="failure_score must be a number, got 'zero'"):
        ap.Evaluate(devset=devset(1), metric=ap.answer_exact_match, failure_score="zero")
    with pytest.raises(TypeError, match="metric must be a function.*'answer'"):
        ap.Evaluate(devset=devset(1), metric="answer")
    with pytest.raises(
        TypeError, match=r"must accept \(example, prediction\) or \(example, prediction, trace\)"
    ):
        ap.Evaluate(devset=devset(1), metric=lambda pred: 1)
    evaluate = ap.Evaluate(devset=devset(1), metric=ap.answer_exact_match)
    with pytest.raises(TypeError, match="program must be callable.*'QA'"):
        evaluate("QA")


def test_empty_devset_scores_zero():
    result = ap.Evaluate(devset=[], metric=ap.answer_exact_match, display_progress=False)(QA())
    assert result.score == 0.0 and result.results == []


def _mixed_result(tmp_path) -> EvaluationResult:
    def program(question):
        if question == "q2":
            raise ValueError("no answer for q2")
        return ap.Prediction(answer=question.replace("q", "a"), confidence=0.5)

    examples = devset(3)
    examples[0] = ap.Example(question="q0", answer=["a0", "A-zero"]).with_inputs("question")
    return ap.Evaluate(devset=examples, metric=ap.answer_exact_match, display_progress=False)(
        program
    )


def test_to_json_round_trip(tmp_path):
    result = _mixed_result(tmp_path)
    path = result.to_json(tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert data["score"] == pytest.approx(2 / 3)
    assert data["errors"] == 1
    assert [r["index"] for r in data["results"]] == [0, 1, 2]
    first, _, failed = data["results"]
    assert first["example"] == {"question": "q0", "answer": ["a0", "A-zero"]}
    assert first["prediction"] == {"answer": "a0", "confidence": 0.5}
    assert first["score"] == 1.0 and first["error"] is None
    assert failed["prediction"] is None
    assert failed["error"] == "ValueError: no answer for q2"


def test_to_csv_round_trip(tmp_path):
    result = _mixed_result(tmp_path)
    path = result.to_csv(tmp_path / "results.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "index",
        "answer",
        "question",
        "pred_answer",
        "pred_confidence",
        "score",
        "error",
    ]
    assert [row["index"] for row in rows] == ["0", "1", "2"]
    assert json.loads(rows[0]["answer"]) == ["a0", "A-zero"]  # non-strings are JSON
    assert rows[1]["answer"] == "a1" and rows[1]["pred_answer"] == "a1"
    assert rows[1]["pred_confidence"] == "0.5"
    assert [float(row["score"]) for row in rows] == [1.0, 1.0, 0.0]
    assert rows[2]["pred_answer"] == "" and rows[2]["error"] == "ValueError: no answer for q2"


def test_to_csv_keeps_plain_predictions(tmp_path):
    result = ap.Evaluate(
        devset=devset(2), metric=lambda e, p: p == e.answer, display_progress=False
    )(lambda question: question.replace("q", "a"))
    with result.to_csv(tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["prediction"] for row in rows] == ["a0", "a1"]
    assert result.score == 1.0


def test_progress_bar_shows_the_running_metric(capsys):
    ap.configure(lm=ap.ScriptedLM(partly_right))
    ap.Evaluate(devset=devset(10), metric=ap.answer_exact_match, num_threads=2)(QA())
    err = capsys.readouterr().err
    assert "Evaluate" in err
    assert "10/10" in err
    assert "metric=0.400" in err  # the final postfix: 4 right out of 10
    assert "errors=0" in err


def test_display_progress_false_is_silent(capsys):
    ap.configure(lm=ap.ScriptedLM(partly_right))
    ap.Evaluate(devset=devset(4), metric=ap.answer_exact_match, display_progress=False)(QA())
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_many_failures_log_the_first_five_and_one_summary(caplog):
    devset = [ap.Example(q=str(i), a=str(i)).with_inputs("q") for i in range(20)]

    def broken(q):
        raise RuntimeError(f"no answer for {q}")

    with caplog.at_level("WARNING", logger="apprentice.evaluate.evaluate"):
        result = ap.Evaluate(devset=devset, metric=lambda e, p: 1.0, num_threads=4)(broken)
    assert result.errors == 20 and all(r.error for r in result.results)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed: RuntimeError" in m for m in messages) == 5
    assert any(m.startswith("20 of 20 examples failed") for m in messages)


def test_record_steps_files_each_run_on_its_own_result_even_for_equal_inputs():
    # Before, the report matched runs to results by their JSON-encoded inputs: two
    # examples with the same question could swap or lose their steps.
    def answer_by_thread(signature, inputs):
        return {"answer": "a" if inputs["question"] == "same" else "wrong"}

    examples = [ap.Example(question="same", answer="a").with_inputs("question")] * 6 + [
        ap.Example(question="boom", answer="a").with_inputs("question")
    ]

    class Failing(QA):
        def forward(self, question):
            prediction = self.answer(question=question)
            if question == "boom":
                raise RuntimeError("after the call")
            return prediction

    ap.configure(lm=ap.ScriptedLM(answer_by_thread))
    result = ap.Evaluate(
        devset=examples,
        metric=ap.answer_exact_match,
        num_threads=4,
        display_progress=False,
        record_steps=True,
    )(Failing())
    assert [r.score for r in result.results] == [1.0] * 6 + [0.0]
    for r in result.results:
        assert len(r.steps) == 1 and r.steps[0].predictor == "answer"
        assert r.steps[0].inputs["question"] == r.example.question
        assert r.latency_s > 0
    assert result.results[-1].error.startswith("RuntimeError")
    # Off by default: no steps are kept.
    plain = ap.Evaluate(devset=examples[:2], metric=ap.answer_exact_match, display_progress=False)
    assert all(r.steps is None for r in plain(QA()).results)
