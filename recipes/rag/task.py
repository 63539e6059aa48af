"""RAG over a generated local corpus: retrieve passages with BM25, answer from them.

The corpus describes made-up towns (population, river, founder), so no model can know an
answer without reading it: a student that answers held-out towns correctly is using the
passages it was given. Deterministic given a seed, so recipe, tests and benchmarks see the
same corpus and questions.
"""

from __future__ import annotations

import functools
import random
import re

import apprentice as ap

N_TOWNS = 400
_SYLLABLES = (  # noqa: SIM905 - a word list reads better as one string
    "ka lo mi ra ven tor bel sun dar fen gol hal ix jor kel mur nal opi pra quo rin sel "
    "tam ulo vor wen yas zel bri cor dun esk"
).split()
_QUESTIONS = {
    "population": "What is the population of {town}?",
    "river": "Which river flows through {town}?",
    "founder": "Who founded {town}?",
}


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


@functools.lru_cache(maxsize=4)
def make_world(n_towns: int = N_TOWNS, seed: int = 0) -> tuple[dict[str, dict[str, str]], ...]:
    """One record per town, unique names: {town, population, river, founder}."""
    rng = random.Random(seed)
    towns, seen = [], set()
    while len(towns) < n_towns:
        town = _name(rng, 3)
        if town in seen:
            continue
        seen.add(town)
        towns.append(
            {
                "town": town,
                "population": str(rng.randint(1000, 99999)),
                "river": _name(rng, 2),
                "founder": f"{_name(rng, 2)} {_name(rng, 2)}",
            }
        )
    return tuple(towns)


def make_corpus(n_towns: int = N_TOWNS, seed: int = 0) -> list[str]:
    """Three one-sentence passages per town, in a shuffled order."""
    passages = []
    for t in make_world(n_towns, seed):
        passages += [
            f"{t['town']} has a population of {t['population']} people.",
            f"The river {t['river']} flows through {t['town']}.",
            f"{t['town']} was founded by {t['founder']}.",
        ]
    random.Random(seed + 1).shuffle(passages)
    return passages


@functools.lru_cache(maxsize=4)
def corpus_retriever(n_towns: int = N_TOWNS, seed: int = 0) -> ap.BM25Retriever:
    """The BM25 index over the corpus, built once per process."""
    return ap.BM25Retriever(make_corpus(n_towns, seed))


def make_examples(n: int, *, towns: tuple[int, int] = (0, 300), seed: int = 0) -> list[ap.Example]:
    """``n`` questions about towns ``towns[0]..towns[1]-1`` (train and dev use apart ranges,
    so dev asks about towns the student never saw an answer for)."""
    world = make_world()
    pairs = [(t, kind) for t in range(*towns) for kind in _QUESTIONS]
    if n > len(pairs):
        raise ValueError(f"n={n} but towns {towns} give only {len(pairs)} distinct questions")
    examples = []
    for index, kind in random.Random(seed).sample(pairs, n):
        t = world[index]
        examples.append(
            ap.Example(
                question=_QUESTIONS[kind].format(town=t["town"]), answer=t[kind]
            ).with_inputs("question")
        )
    return examples


class GenerateAnswer(ap.Signature):
    """Answer the question with a short answer taken from the context."""

    context: list[str] = ap.InputField(desc="passages that may contain the answer")
    question: str = ap.InputField()
    answer: str = ap.OutputField(desc="a name or a number")


class RAG(ap.Module):
    """Retrieve ``k`` passages for the question, then answer from them."""

    def __init__(self, k: int = 3, rm=None) -> None:
        self.retrieve = ap.Retrieve(k=k, rm=rm if rm is not None else corpus_retriever())
        self.generate_answer = ap.Predict(GenerateAnswer)

    def forward(self, question: str) -> ap.Prediction:
        context = self.retrieve(question).passages
        answer = self.generate_answer(context=context, question=question).answer
        return ap.Prediction(context=context, answer=answer)


_PATTERNS = {
    "population": r"^{town} has a population of (\d+) people\.$",
    "river": r"^The river (\w+) flows through {town}\.$",
    "founder": r"^{town} was founded by (\w+ \w+)\.$",
}


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: reads the answer out of the passages it was given (and says
    "unknown" when they lack it), as a careful model would."""
    question = inputs["question"]
    town = re.search(r"(\w+)\?$", question).group(1)
    kind = next(k for k, q in _QUESTIONS.items() if q.format(town=town) == question)
    pattern = re.compile(_PATTERNS[kind].format(town=re.escape(town)))
    for passage in inputs["context"]:
        match = pattern.match(passage)
        if match:
            return {"answer": match.group(1)}
    return {"answer": "unknown"}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.answer.strip() == example.answer)
