"""Extreme multi-label classification over 500 labels: infer, retrieve, rank.

A support message about a device gets one of 500 labels ("dishwasher: leaking", ...).
Listing every label in every prompt costs ~9k characters a call, so the program does what
DSPy's infer-retrieve-rank does: the model first writes a free-text guess, a BM25
retriever over the label set turns the guess into ``k`` candidate labels, and a second call
picks one of them. Both calls are trained into the student. Deterministic given a seed.
"""

from __future__ import annotations

import functools
import random
from typing import Literal

import apprentice as ap

PRODUCTS = (  # noqa: SIM905 - a word list reads better as one string
    "dishwasher, washing machine, tumble dryer, fridge, freezer, oven, microwave, toaster, "
    "kettle, blender, coffee maker, vacuum cleaner, air conditioner, heater, printer, laptop, "
    "monitor, router, television, speaker, headphones, phone, tablet, camera, smartwatch"
).split(", ")
# issue label -> ways a customer describes it
ISSUES = {
    "not turning on": ("will not power on", "is completely dead", "does not start at all"),
    "leaking": ("leaves a puddle underneath", "drips water everywhere", "has a leak"),
    "overheating": ("gets far too hot", "is burning hot to the touch", "runs very hot"),
    "strange noise": ("makes a grinding sound", "rattles loudly", "buzzes all the time"),
    "broken display": ("has a cracked screen", "shows a blank screen", "display flickers"),
    "wrong item delivered": ("arrived but it is a different model", "came as the wrong colour"),
    "missing parts": ("came without the cable", "is missing a part in the box"),
    "late delivery": ("still has not arrived", "delivery is two weeks late"),
    "refund request": ("I want my money back", "please refund me"),
    "warranty claim": ("is still under warranty and broke", "needs a warranty repair"),
    "smells of burning": ("smells like smoke", "gives off a burning smell"),
    "keeps restarting": ("reboots every few minutes", "restarts by itself"),
    "connection drops": ("keeps losing wifi", "disconnects constantly"),
    "battery drains fast": ("battery is empty in an hour", "loses charge quickly"),
    "buttons not working": ("buttons do nothing", "the controls are unresponsive"),
    "error code shown": ("shows error E4", "displays an error code"),
    "damaged in transit": ("arrived dented", "box was crushed and it is damaged"),
    "installation help": ("how do I install it", "need help setting it up"),
    "software update failed": ("update failed halfway", "firmware update will not finish"),
    "too slow": ("is really slow", "takes ages to do anything"),
}
LABELS = tuple(f"{p}: {issue}" for p in PRODUCTS for issue in ISSUES)
_OPENERS = ("Hi,", "Hello,", "Urgent:", "", "Good morning,")
_CLOSERS = ("Thanks.", "", "Please help!", "Regards, Kim")


def make_examples(n: int, seed: int = 0) -> list[ap.Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        product, issue = rng.choice(PRODUCTS), rng.choice(list(ISSUES))
        body = f"My {product} {rng.choice(ISSUES[issue])}."
        text = " ".join(p for p in (rng.choice(_OPENERS), body, rng.choice(_CLOSERS)) if p)
        examples.append(ap.Example(text=text, label=f"{product}: {issue}").with_inputs("text"))
    return examples


@functools.lru_cache(maxsize=1)
def label_retriever() -> ap.BM25Retriever:
    return ap.BM25Retriever(LABELS, stopwords=None)


class InferLabel(ap.Signature):
    """Describe the message's device and problem in a few words, like a category name."""

    text: str = ap.InputField()
    guess: str = ap.OutputField(desc="'<device>: <problem>'")


class RankLabels(ap.Signature):
    """Pick the label that fits the message best, from the candidates."""

    text: str = ap.InputField()
    candidates: list[str] = ap.InputField(desc="labels that may fit")
    label: str = ap.OutputField(desc="one of the candidates, copied exactly")


class InferRetrieveRank(ap.Module):
    def __init__(self, k: int = 10) -> None:
        self.infer = ap.Predict(InferLabel)
        self.retrieve = ap.Retrieve(k=k, rm=label_retriever())
        self.rank = ap.Predict(RankLabels)

    def forward(self, text: str) -> ap.Prediction:
        guess = self.infer(text=text).guess
        candidates = self.retrieve(guess).passages
        label = self.rank(text=text, candidates=candidates).label
        return ap.Prediction(guess=guess, candidates=candidates, label=label)


class ClassifyDirectly(ap.Signature):
    """Label the support message. (The naive way: every label in every prompt.)"""

    text: str = ap.InputField()
    label: Literal[LABELS] = ap.OutputField()


def _truth(text: str) -> str:
    product = next(p for p in sorted(PRODUCTS, key=len, reverse=True) if f"My {p} " in text)
    issue = next(i for i, ways in ISSUES.items() if any(w in text for w in ways))
    return f"{product}: {issue}"


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: knows every way a problem is described, as a strong model
    would; the ranker takes the right candidate, or the first when it is missing."""
    truth = _truth(inputs["text"])
    if "guess" in signature.output_fields:
        return {"guess": truth}
    candidates = inputs["candidates"]
    return {"label": truth if truth in candidates else (candidates[0] if candidates else "")}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    return float(prediction.label == example.label)
