"""A synthetic support-ticket task: classify the ticket, then extract the order number.

Deterministic given a seed, so the demo, tests and benchmarks all see the same data.
"""

from __future__ import annotations

import random
import re
from typing import Literal

import apprentice as ap

CATEGORIES = ("billing", "bug", "shipping")
_TEMPLATES = {
    "billing": [
        "I was charged twice for order {order}, please refund the extra payment.",
        "My invoice for order {order} shows the wrong amount.",
        "Why did my card get billed again for {order}?",
    ],
    "bug": [
        "The app crashes every time I open order {order}.",
        "Clicking 'track' on {order} shows an error page.",
        "The checkout button does nothing since the update; order {order} is stuck.",
    ],
    "shipping": [
        "Order {order} has not arrived after two weeks.",
        "The parcel for {order} was delivered to the wrong address.",
        "Can you tell me when order {order} will ship?",
    ],
}
_OPENERS = ["Hi,", "Hello team,", "Urgent:", "", "Good morning,"]
_CLOSERS = ["Thanks.", "Regards, Sam", "", "Please help!", "Cheers"]


def make_examples(n: int, seed: int = 0) -> list[ap.Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        category = rng.choice(CATEGORIES)
        order = f"A{rng.randint(10000, 99999)}"
        body = rng.choice(_TEMPLATES[category]).format(order=order)
        ticket = " ".join(p for p in (rng.choice(_OPENERS), body, rng.choice(_CLOSERS)) if p)
        examples.append(
            ap.Example(ticket=ticket, category=category, order_id=order).with_inputs("ticket")
        )
    return examples


class ClassifyTicket(ap.Signature):
    """Classify a customer support ticket into its queue."""

    ticket: str = ap.InputField(desc="the customer's message")
    category: Literal["billing", "bug", "shipping"] = ap.OutputField()


class ExtractOrder(ap.Signature):
    """Extract the order number the ticket is about."""

    ticket: str = ap.InputField()
    category: str = ap.InputField()
    order_id: str = ap.OutputField(desc="like A12345")


class TicketTriage(ap.Module):
    def __init__(self) -> None:
        self.classify = ap.ChainOfThought(ClassifyTicket)
        self.extract = ap.Predict(ExtractOrder)

    def forward(self, ticket: str) -> ap.Prediction:
        category = self.classify(ticket=ticket).category
        order_id = self.extract(ticket=ticket, category=category).order_id
        return ap.Prediction(category=category, order_id=order_id)


_KEYWORDS = {
    "billing": ("charged", "invoice", "billed", "refund"),
    "bug": ("crash", "error", "does nothing", "stuck"),
    "shipping": ("arrived", "delivered", "ship"),
}


def teacher(signature, inputs: dict) -> dict:
    """The scripted teacher: solves the task by rule, the way a strong model would."""
    ticket = inputs["ticket"]
    if "category" in signature.output_fields:
        category = next(
            (c for c, words in _KEYWORDS.items() if any(w in ticket for w in words)), "bug"
        )
        return {"reasoning": f"The ticket mentions {category} matters.", "category": category}
    match = re.search(r"A\d{5}", ticket)
    return {"order_id": match.group(0) if match else ""}


def metric(example: ap.Example, prediction: ap.Prediction, trace=None) -> float:
    """Both steps right: 1.0; one right: 0.5."""
    return (
        float(prediction.category == example.category)
        + float(prediction.order_id == example.order_id)
    ) / 2
