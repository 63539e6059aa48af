"""Named-entity recognition with a typed output: ``entities: list[Entity]``, each entity a
pydantic model ``{text, type}`` with the type one of three labels.

The prompt shows the model the entity's JSON schema; the reply is parsed and validated
into ``Entity`` objects (a label outside the three is a parse error, not a silent string).
Sentences come from templates over fixed pools of made-up names, so the data is
deterministic given a seed; the score is the entity-level F1 of each sentence.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

from pydantic import BaseModel

import apprentice as ap

PEOPLE = [
    "Alma Reyes",
    "Kenji Sato",
    "Ines Duarte",
    "Tomasz Nowak",
    "Priya Raman",
    "Omar Haddad",
    "Lena Berg",
    "Felix Okafor",
    "Mira Kovac",
    "Dev Malhotra",
]
ORGS = [
    "Norwind Labs",
    "Calder Bank",
    "Bluefin Media",
    "Oakridge Health",
    "Vantor Motors",
    "Pioneer Foods",
    "Ardent Systems",
    "Silverline Air",
]
PLACES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Perth", "Bergen", "Cusco", "Hanoi"]
_TEMPLATES = [
    "{person} joined {org} in {place} last spring.",
    "{org} opened a new office in {place}.",
    "{person} flew from {place} to {place2} to meet {person2}.",
    "Yesterday {person} said that {org} will hire in {place}.",
    "{person2} and {person} left {org} for {org2}.",
    "The mayor of {place} thanked {org} for the new park.",
    "{org} and {org2} signed a deal in {place}.",
    "{person} moved to {place} after {org} closed its {place2} branch.",
]
TYPES = {"person": PEOPLE, "organization": ORGS, "location": PLACES}


class Entity(BaseModel):
    text: str
    type: Literal["person", "organization", "location"]


class ExtractEntities(ap.Signature):
    """Find the named entities in the sentence: people, organizations and locations."""

    sentence: str = ap.InputField()
    entities: list[Entity] = ap.OutputField(desc="in order of appearance")


class NER(ap.Module):
    def __init__(self) -> None:
        self.extract = ap.Predict(ExtractEntities)

    def forward(self, sentence: str) -> ap.Prediction:
        return ap.Prediction(entities=self.extract(sentence=sentence).entities)


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[ap.Example]:
    """``n`` sentences of ``split``: one sentence in five (by a hash of its text) belongs to
    "dev", the others to "train", so a dev set never repeats a training sentence."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    rng = random.Random(seed)
    examples = []
    while len(examples) < n:
        people, orgs, places = rng.sample(PEOPLE, 2), rng.sample(ORGS, 2), rng.sample(PLACES, 2)
        sentence = rng.choice(_TEMPLATES).format(
            person=people[0],
            person2=people[1],
            org=orgs[0],
            org2=orgs[1],
            place=places[0],
            place2=places[1],
        )
        if (_bucket(sentence) == 0) != (split == "dev"):
            continue
        examples.append(
            ap.Example(sentence=sentence, entities=find_entities(sentence)).with_inputs("sentence")
        )
    return examples


def _bucket(sentence: str) -> int:
    return hashlib.sha256(sentence.encode()).digest()[0] % 5


def find_entities(sentence: str) -> list[dict]:
    """Every pool name in the sentence with its type, in order of appearance."""
    found = []
    for kind, names in TYPES.items():
        for name in names:
            found += [(m.start(), name, kind) for m in re.finditer(re.escape(name), sentence)]
    return [{"text": name, "type": kind} for _, name, kind in sorted(found)]


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: knows every name, the way a strong model would."""
    return {"entities": find_entities(inputs["sentence"])}


def _pairs(entities) -> list[tuple[str, str]]:
    return [
        (e["text"], e["type"]) if isinstance(e, dict) else (e.text, e.type) for e in entities or []
    ]


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    """Entity-level F1 of one sentence (1.0 when both are empty)."""
    gold, guess = _pairs(example.entities), _pairs(prediction.entities)
    if not gold and not guess:
        return 1.0
    hits = sum(min(gold.count(p), guess.count(p)) for p in set(guess))
    if hits == 0:
        return 0.0
    precision, recall = hits / len(guess), hits / len(gold)
    return 2 * precision * recall / (precision + recall)
