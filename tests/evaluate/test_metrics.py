"""QA metrics: normalization, exact match, token F1, answer-in-passages, metric forms."""

from __future__ import annotations

import pytest

import apprentice as ap
from apprentice.evaluate.metrics import (
    answer_exact_match,
    answer_passage_match,
    exact_match,
    normalize_text,
    passage_has_answer,
    token_f1,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Paris", "paris"),  # case
        ("PARIS!", "paris"),  # punctuation
        ("Hello, world.", "hello world"),
        ("The Eiffel Tower", "eiffel tower"),  # articles
        ("a cat and an owl", "cat and owl"),
        ("  lots \t of\n\nspace  ", "lots of space"),  # whitespace
        ("Theory of the atom", "theory of atom"),  # "The" inside a word stays
        ("anathema", "anathema"),
        ("", ""),
        (42, "42"),
    ],
)
def test_normalize_text(raw, normalized):
    assert normalize_text(raw) == normalized


def test_exact_match_normalizes_both_sides():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("  PARIS ", "Paris!") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert isinstance(exact_match("x", "x"), float)


def test_exact_match_with_list_of_golds():
    assert exact_match("NYC", ["New York City", "NYC"]) == 1.0
    assert exact_match("Boston", ["New York City", "NYC"]) == 0.0
    assert exact_match("Boston", ("Boston",)) == 1.0
    assert exact_match("anything", []) == 0.0


def test_exact_match_number_gold_and_bad_gold():
    assert exact_match("42", 42) == 1.0
    with pytest.raises(TypeError, match="None"):
        exact_match("x", None)


def test_token_f1_hand_computed():
    # pred tokens: [barack, obama, was, president] ; gold: [obama]
    # common = 1, precision = 1/4, recall = 1/1, F1 = 2*(1/4)*1/(1/4+1) = 0.4
    assert token_f1("Barack Obama was president", "Obama") == pytest.approx(0.4)
    # pred [new, york] vs gold [new, york, city]: P = 2/2, R = 2/3, F1 = 0.8
    assert token_f1("New York", "New York City") == pytest.approx(0.8)
    # articles and punctuation are dropped before counting: identical after normalization
    assert token_f1("The cat.", "cat") == 1.0
    assert token_f1("dog", "cat") == 0.0


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # pred [the->dropped] [red, red, red] vs gold [red, blue]: common = min(3,1) = 1
    # P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    assert token_f1("red red red", "red blue") == pytest.approx(0.4)


def test_token_f1_takes_best_gold_and_handles_empties():
    assert token_f1("New York", ["Boston", "New York City"]) == pytest.approx(0.8)
    assert token_f1("", "") == 1.0  # both empty after normalization
    assert token_f1("the", "an") == 1.0  # articles only: both normalize to empty
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", []) == 0.0


def test_passage_has_answer_whole_words_only():
    passages = ["The capital of France is Paris.", "Berlin is in Germany."]
    assert passage_has_answer(passages, "paris") == 1.0
    assert passage_has_answer(passages, "Germany") == 1.0
    assert passage_has_answer(passages, "capital of France") == 1.0  # multi-word span
    # substrings of words do not count
    assert passage_has_answer(["Parisian cafes"], "Paris") == 0.0
    assert passage_has_answer(["Berlin is in Germany."], "erli") == 0.0
    assert passage_has_answer(passages, "Rome") == 0.0


def test_passage_has_answer_accepts_one_passage_and_list_of_golds():
    assert passage_has_answer("Paris is lovely", "paris") == 1.0
    assert passage_has_answer(["x y z"], ["nope", "y"]) == 1.0
    # a gold that normalizes to nothing never matches
    assert passage_has_answer(["the end"], "the") == 0.0
    assert passage_has_answer([], "paris") == 0.0


def test_answer_exact_match_metric_form():
    example = ap.Example(question="q", answer=["Paris", "City of Light"]).with_inputs("question")
    assert answer_exact_match(example, ap.Prediction(answer="the city of light")) == 1.0
    assert answer_exact_match(example, ap.Prediction(answer="Lyon")) == 0.0
    assert answer_exact_match(example, ap.Prediction(answer="Paris"), None) == 1.0
    # another field, chosen by keyword
    labelled = ap.Example(text="t", label="Positive").with_inputs("text")
    assert answer_exact_match(labelled, ap.Prediction(label="positive"), field="label") == 1.0


def test_answer_exact_match_names_the_missing_field():
    example = ap.Example(question="q", answer="Paris").with_inputs("question")
    with pytest.raises(KeyError, match=r"no field 'answer'.*\['response'\]"):
        answer_exact_match(example, ap.Prediction(response="Paris"))


def test_answer_passage_match_metric_form():
    example = ap.Example(question="q", answer="Paris").with_inputs("question")
    hit = ap.Prediction(context=["France's capital is Paris."], answer="?")
    miss = ap.Prediction(context=["Parisian food"], answer="Paris")
    assert answer_passage_match(example, hit) == 1.0
    assert answer_passage_match(example, miss) == 0.0
    with pytest.raises(KeyError, match="no field 'context'"):
        answer_passage_match(example, ap.Prediction(answer="Paris"))
