"""Multi-hop question answering with Suggest, on a small generated world (offline).

DSPy's well-known MultiHop program: a query generator per hop, a search after each query,
then an answer from what was gathered; each query is checked with ``ap.Suggest`` (short,
and different from the question and the earlier queries), and a failing one is rewritten
with the rejected query and the reason as feedback.

The world: people, each born in a city, each city in a country. "In which country was Ada
Moreau born?" needs two searches: the person (-> "Ada Moreau was born in Varell."), then
the city (-> "Varell is a city in Ostmark."). The scripted teacher sometimes writes a bad
query first (the whole question; the first hop's query again), so every run exercises
the backtracking, and distillation must learn from the corrected queries only.

The search is ``ap.Retrieve``: BM25 (``ap.BM25Retriever``) over the generated corpus by
default, or any callable ``search(query, k) -> list[str]`` (``MultiHop(search=...)``, e.g.
``keyword_overlap_search``, which needs nothing beyond Python).
(It should become ``ap.Retrieve`` over a BM25 index once apprentice.retrieve lands.)
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

import apprentice as ap

FIRST = ("Ada", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas")
LAST = ("Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Sato", "Tanaka", "Ulrich")
CITIES = {
    "Varell": "Ostmark",
    "Dunmore": "Ostmark",
    "Kestrel": "Ostmark",
    "Lunor": "Belavia",
    "Marrow": "Belavia",
    "Serin": "Belavia",
    "Tolvik": "Caldera",
    "Ambrel": "Caldera",
    "Quarry": "Caldera",
    "Fenwick": "Dorsia",
    "Halden": "Dorsia",
    "Ispen": "Dorsia",
}
MAX_QUERY_WORDS = 4

Search = Callable[[str, int], list[str]]


def _world(seed: int = 0) -> dict[str, str]:
    """Person -> birth city, fixed by the seed."""
    rng = random.Random(seed)
    return {f"{f} {last}": rng.choice(sorted(CITIES)) for f in FIRST for last in LAST}


BIRTHPLACE = _world()
# Places first: on equal overlap the search returns the earlier passage, so a city's own
# passage comes before the people born there.
CORPUS = [f"{city} is a city in {country}." for city, country in CITIES.items()] + [
    f"{person} was born in {city}." for person, city in BIRTHPLACE.items()
]
_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def keyword_overlap_search(query: str, k: int = 1) -> list[str]:
    """The ``k`` corpus passages sharing the most words with ``query`` (ties: corpus order).
    A stand-in for a real retriever (BM25, dense) so the recipe needs nothing beyond Python."""
    wanted = _words(query)
    scored = [(-len(wanted & _words(p)), i) for i, p in enumerate(CORPUS)]
    return [CORPUS[i] for score, i in sorted(scored)[:k] if score < 0]


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[ap.Example]:
    """Questions about the people of one split: one person in five is held out for
    ``split="dev"``, so dev questions ask about people (first and last name pairs) never
    seen in training, though each name on its own was."""
    if split not in ("train", "dev"):
        raise ValueError(f"split={split!r} must be 'train' or 'dev'")
    people = [p for i, p in enumerate(BIRTHPLACE) if (i % 5 == 2) == (split == "dev")]
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        person = rng.choice(people)
        examples.append(
            ap.Example(
                question=f"In which country was {person} born?",
                answer=CITIES[BIRTHPLACE[person]],
            ).with_inputs("question")
        )
    return examples


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


class MultiHop(ap.Module):
    """A query per hop -> search -> answer, with Suggest on every query."""

    def __init__(
        self, hops: int = 2, passages_per_hop: int = 1, search: Search | None = None
    ) -> None:
        self.generate_query = [ap.Predict(GenerateSearchQuery) for _ in range(hops)]
        self.generate_answer = ap.Predict(GenerateAnswer)
        # DSPy's shape: a Retrieve per program, BM25 over the corpus unless a search is given.
        self.retrieve = ap.Retrieve(k=passages_per_hop, rm=search or ap.BM25Retriever(CORPUS))

    def forward(self, question: str) -> ap.Prediction:
        context: list[str] = []
        earlier = [question]
        for hop in self.generate_query:
            query = hop(context=context, question=question).query
            ap.Suggest(
                len(query.split()) <= MAX_QUERY_WORDS,
                f"Query should be short: at most {MAX_QUERY_WORDS} words",
                target=hop,
            )
            ap.Suggest(
                query not in earlier,
                "Query should be different from the question and earlier queries: "
                + "; ".join(earlier),
                target=hop,
            )
            earlier.append(query)
            context += [p for p in self.retrieve(query).passages if p not in context]
        answer = self.generate_answer(context=context, question=question).answer
        return ap.Prediction(context=context, answer=answer)


def _person(question: str) -> str:
    match = re.search(r"was (.+) born", question)
    return match.group(1) if match else question


def _stumbles(question: str, hop: int) -> bool:
    """Whether the teacher writes a bad query first at this hop (about a third of the time
    at each hop, fixed by the question so reruns and caches agree)."""
    digest = hashlib.sha256(question.encode()).digest()
    return digest[hop] % 3 == 0


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: a careful model that sometimes writes a bad query first and
    fixes it once told why (the ``feedback`` input of a re-run)."""
    question, context = inputs["question"], inputs["context"]
    if "answer" in signature.output_fields:
        countries = [m.group(1) for p in context for m in [re.search(r"a city in (\w+)", p)] if m]
        return {"answer": countries[0] if countries else "unknown"}
    hop = 0 if not context else 1
    good = _person(question)
    if hop == 1:
        cities = [m.group(1) for p in context for m in [re.search(r"born in (\w+)", p)] if m]
        good = cities[0] if cities else good
    if "feedback" in inputs or not _stumbles(question, hop):
        return {"query": good}
    return {"query": question if hop == 0 else _person(question)}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return ap.answer_exact_match(example, prediction)


def good_queries(question: str) -> list[str]:
    """The queries a careful model writes for ``question``: the person, then their city."""
    person = _person(question)
    return [person, BIRTHPLACE[person]]
