"""The ticket task's classify step run as several attempts: MultiChainComparison and BestOfN.

``CompareTriage`` samples three chains of thought and has MultiChainComparison answer from
them; ``ClassifyBest`` runs the classifier inside BestOfN with a verifier (the ticket must
hold evidence for the chosen queue). Each comes with a scripted teacher that makes the
attempts matter: ``compare_teacher``'s third sample on every ticket names the wrong queue,
so the comparison must weigh them; ``best_teacher``'s first reply on every third ticket is
wrong, so BestOfN must throw it away. Only the category is scored (``metric``).

The teachers count their calls per ticket (that is how a sample "comes third"): each
recipe run is one process, and the teacher's cache keeps the replies of a rerun the same.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import apprentice as ap
from recipes.demo.task import CATEGORIES, ClassifyTicket
from recipes.demo.task import teacher as ticket_teacher

EVIDENCE = {
    "billing": ("charged", "invoice", "billed"),
    "bug": ("crash", "error", "does nothing"),
    "shipping": ("arrived", "delivered", "ship"),
}

Script = Callable[[Any, dict], dict]


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    """The queue is right: 1.0."""
    return float(prediction.category == example.category)


def _next_queue(category: str) -> str:
    return CATEGORIES[(CATEGORIES.index(category) + 1) % len(CATEGORIES)]


class CompareTriage(ap.Module):
    """Three sampled chains of thought, then MultiChainComparison answers from them."""

    def __init__(self) -> None:
        self.attempt = ap.ChainOfThought(ClassifyTicket, n=3)
        self.compare = ap.MultiChainComparison(ClassifyTicket, M=3)

    def forward(self, ticket: str) -> ap.Prediction:
        return self.compare(self.attempt(ticket=ticket), ticket=ticket)


def sampling_teacher() -> Script:
    """The demo's teacher for the attempts, except that every third sample (the last of
    each request's three) names the next queue; the comparer answers with the majority."""
    calls: Counter = Counter()

    def answer(signature, inputs: dict) -> dict:
        if "attempts" in signature.input_fields:
            votes = Counter(re.findall(r"category: (\w+)»", inputs["attempts"]))
            best, count = votes.most_common(1)[0]
            return {"rationale": f"{count} of 3 attempts say {best}.", "category": best}
        reply = ticket_teacher(signature, inputs)
        calls[inputs["ticket"]] += 1
        if calls[inputs["ticket"]] % 3 == 0:
            wrong = _next_queue(reply["category"])
            reply = {"reasoning": f"The ticket mentions {wrong} matters.", "category": wrong}
        return reply

    return answer


def has_evidence(inputs: dict, prediction: ap.Prediction) -> float:
    """BestOfN's verifier: the ticket holds one of the chosen queue's words."""
    return float(any(word in inputs["ticket"] for word in EVIDENCE[prediction.category]))


class ClassifyBest(ap.Module):
    """The classifier inside BestOfN (N=2), verified by ``has_evidence``."""

    def __init__(self) -> None:
        self.best = ap.BestOfN(
            ap.Predict(ClassifyTicket), N=2, reward_fn=has_evidence, threshold=1.0
        )

    def forward(self, ticket: str) -> ap.Prediction:
        return self.best(ticket=ticket)


def flawed(ticket: str) -> bool:
    """Every third ticket, by its order number, is one the teacher first gets wrong."""
    return int(re.search(r"A(\d{5})", ticket).group(1)) % 3 == 0


def flaky_teacher() -> Script:
    """The demo's teacher, except that on every third ticket (by its order number) its
    odd-numbered replies name the next queue: a sampler whose first sample on a hard
    ticket is wrong and whose next one is right."""
    calls: Counter = Counter()

    def answer(signature, inputs: dict) -> dict:
        reply = ticket_teacher(signature, inputs)
        ticket = inputs["ticket"]
        calls[ticket] += 1
        if flawed(ticket) and calls[ticket] % 2 == 1:
            reply["category"] = _next_queue(reply["category"])
        return reply

    return answer


# The recipes' teachers (teacher.script names a function): one counter each per process.
compare_teacher = sampling_teacher()
best_teacher = flaky_teacher()
