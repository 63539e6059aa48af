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
_GOODS = (  # noqa: SIM905
    "cheese glass wool silk pottery salt honey cider lace clocks bells paper rope soap "
    "wine bread leather tin copper marble dye linen candles barrels pipes maps hats boats"
).split()
_QUESTIONS = {
    "river": "Which river flows through {town}?",
    "founder": "Who founded {town}?",
    "goods": "What is {town} known for?",
}
_PASSAGES = {
    "river": "The river {river} flows through {town}.",
    "founder": "{town} was founded by {founder}.",
    "goods": "{town} is known for its {goods}.",
}


def _names(rng: random.Random, n: int, parts: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize())
    return sorted(names)


@functools.lru_cache(maxsize=4)
def make_world(n_towns: int = N_TOWNS, seed: int = 0) -> tuple[dict[str, str], ...]:
    """One record per town (unique three-syllable names): {town, river, founder, goods}.
    Rivers, founders and goods come from short lists, so an answer is one word that the
    passages hold, and which one a town has is random: only the passages tell."""
    rng = random.Random(seed)
    rivers, founders = _names(rng, 30, 2), _names(rng, 30, 2)
    return tuple(
        {
            "town": town,
            "river": rng.choice(rivers),
            "founder": rng.choice(founders),
            "goods": rng.choice(_GOODS),
        }
        for town in rng.sample(_names(rng, n_towns, 3), n_towns)
    )


def make_corpus(n_towns: int = N_TOWNS, seed: int = 0) -> list[str]:
    """Three one-sentence passages per town, in a shuffled order."""
    passages = [text.format(**t) for t in make_world(n_towns, seed) for text in _PASSAGES.values()]
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
    answer: str = ap.OutputField(desc="one word from the context")


class RAG(ap.Module):
    """Retrieve ``k`` passages for the question, then answer from them."""

    def __init__(self, k: int = 3, rm=None) -> None:
        self.retrieve = ap.Retrieve(k=k, rm=rm if rm is not None else corpus_retriever())
        self.generate_answer = ap.Predict(GenerateAnswer)

    def forward(self, question: str) -> ap.Prediction:
        context = self.retrieve(question).passages
        answer = self.generate_answer(context=context, question=question).answer
        return ap.Prediction(context=context, answer=answer)


_ANSWER_IN = {
    "river": r"The river (\w+) flows through {town}\.",
    "founder": r"{town} was founded by (\w+)\.",
    "goods": r"{town} is known for its (\w+)\.",
}


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: reads the answer out of the passages it was given (and says
    "unknown" when they lack it), as a careful model would."""
    for kind, template in _QUESTIONS.items():
        asked = re.fullmatch(re.escape(template).replace(r"\{town\}", r"(\w+)"), inputs["question"])
        if asked:
            pattern = re.compile(_ANSWER_IN[kind].format(town=asked.group(1)))
            break
    else:
        return {"answer": "unknown"}
    for passage in inputs["context"]:
        found = pattern.fullmatch(passage)
        if found:
            return {"answer": found.group(1)}
    return {"answer": "unknown"}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.answer.strip() == example.answer)
