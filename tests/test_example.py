import copy
import pickle

import pytest

import apprentice as ap


def test_with_inputs_inputs_and_labels():
    ex = ap.Example(question="q?", answer="a", extra=1).with_inputs("question")
    assert ex.inputs().to_dict() == {"question": "q?"}
    assert ex.labels().to_dict() == {"answer": "a", "extra": 1}
    assert ex.question == "q?" and ex["answer"] == "a"


def test_inputs_without_marking_is_a_clear_error():
    with pytest.raises(ValueError, match="with_inputs"):
        ap.Example(question="q").inputs()
    with pytest.raises(KeyError, match="nope"):
        ap.Example(question="q").with_inputs("nope")


def test_copy_without_and_equality():
    ex = ap.Example(a=1, b=2).with_inputs("a")
    assert ex.copy(b=3).b == 3 and ex.b == 2
    assert ex.copy(b=3).input_keys == {"a"}
    assert "b" not in ex.without("b")
    assert ex == ap.Example(a=1, b=2).with_inputs("a")
    assert ex != ap.Example(a=1, b=2)  # input marks differ
    with pytest.raises(AttributeError, match="no field 'zzz'"):
        _ = ex.zzz


def test_examples_deepcopy_and_pickle():
    ex = ap.Example(a=[1, 2], b="x").with_inputs("a")
    clone = copy.deepcopy(ex)
    clone.a.append(3)
    assert ex.a == [1, 2] and clone.input_keys == {"a"}
    assert pickle.loads(pickle.dumps(ex)) == ex


def test_prediction_completions():
    pred = ap.Prediction.from_completions([{"answer": "a"}, {"answer": "b"}])
    assert pred.answer == "a"
    assert len(pred.completions) == 2
    assert pred.completions.answer == ["a", "b"]
    assert pred.completions[1] == {"answer": "b"}
    single = ap.Prediction(answer="x")
    assert single.completions.answer == ["x"]
    with pytest.raises(ValueError):
        ap.Prediction.from_completions([])
    assert copy.deepcopy(pred).completions.answer == ["a", "b"]
