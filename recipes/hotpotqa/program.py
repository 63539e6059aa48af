"""Multi-hop HotPotQA, as in the DSPy paper: generate a search query per hop, retrieve,
then answer from what was gathered.

Retrieval here runs over the example's own ten paragraphs (HotPotQA's distractor setting),
ranked by word overlap with the query, so the recipe needs no search server. The data is
the HF ``hotpot_qa`` dataset (``distractor`` config) saved to disk once:

    python -c "from datasets import load_dataset; load_dataset('hotpot_qa', 'distractor').save_to_disk('data/hotpotqa')"
"""

from __future__ import annotations

import re
from typing import Any

import apprentice as ap

_WORD = re.compile(r"\w+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "is",
        "was",
        "were",
        "by",
        "and",
        "or",
        "with",
        "from",
        "as",
        "what",
        "which",
        "who",
    ]
)


class GenerateSearchQuery(ap.Signature):
    """Write a simple search query that will help answer a complex question."""

    context: list[str] = ap.InputField(desc="may contain relevant facts")
    question: str = ap.InputField()
    query: str = ap.OutputField()


class GenerateAnswer(ap.Signature):
    """Answer questions with short factoid answers."""

    context: list[str] = ap.InputField(desc="may contain relevant facts")
    question: str = ap.InputField()
    answer: str = ap.OutputField(desc="often between 1 and 5 words")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def passages(context: Any) -> list[str]:
    """HotPotQA's ``context`` ({title: [...], sentences: [[...]]}) as 'Title | text' strings."""
    titles, sentences = context["title"], context["sentences"]
    return [f"{t} | {''.join(s)}" for t, s in zip(titles, sentences, strict=False)]


def retrieve(query: str, pool: list[str], k: int) -> list[str]:
    q = _words(query)
    ranked = sorted(pool, key=lambda p: -len(q & _words(p)))
    return ranked[:k]


class MultiHop(ap.Module):
    def __init__(self, hops: int = 2, passages_per_hop: int = 2) -> None:
        self.hops = hops
        self.k = passages_per_hop
        self.generate_query = [ap.ChainOfThought(GenerateSearchQuery) for _ in range(hops)]
        self.generate_answer = ap.ChainOfThought(GenerateAnswer)

    def forward(self, question: str, context: Any) -> ap.Prediction:
        pool = passages(context)
        gathered: list[str] = []
        for hop in self.generate_query:
            query = hop(context=gathered, question=question).query
            gathered += [p for p in retrieve(query, pool, self.k) if p not in gathered]
        pred = self.generate_answer(context=gathered, question=question)
        return ap.Prediction(context=gathered, answer=pred.answer)


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return ap.answer_exact_match(example, prediction)
