"""Retrieve: the module that fetches passages for a query, and the Retriever contract.

``ap.Retrieve(k=3)(query).passages`` asks a retriever for the ``k`` best passages. The
retriever is the module's own (``Retrieve(k=3, rm=...)``) or the one in force
(``ap.configure(rm=...)`` / ``with ap.context(rm=...)``). Any callable
``(query, k) -> list[str]`` is a retriever; ``Retriever`` subclasses (BM25, dense) add
scores and indices.

How retrieval reaches the training data: a program hands the passages to its next
predictor as an input field (``context=...``), so they are in that predictor's recorded
step, and the dataset renders rows from the recorded inputs, never by retrieving again.
The student is therefore trained on exactly the passages the teacher saw, even if the
corpus changes later. The retrieval itself is not a step of the trace: it is not an LM
call, there is nothing in it for a student to learn, and a step without a prompt or a
completion would be counted as a call, a predictor and a dropped row by every reader of
traces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apprentice.example import Prediction
from apprentice.module import Module
from apprentice.settings import settings

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Hit", "Retrieve", "Retriever", "top_k"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: its position in the corpus and its score."""

    index: int
    score: float
    text: str


class Retriever:
    """Base of the retrievers over a fixed corpus: subclasses implement ``scores``.

    Calling one returns the passages (what ``Retrieve`` needs); ``search`` returns
    ``Hit``s with indices and scores. A retriever is shared, not copied, when a program is
    deep-copied (as LMs are): an index over a large corpus is built once.
    """

    #: Hits scoring at or below this are not returned (BM25: no query term in the passage).
    min_score: float | None = None
    #: The attributes that change which passages come back (they enter ``identity``).
    identity_keys: tuple[str, ...] = ()

    def __init__(self, corpus: Sequence[str]) -> None:
        bad = next((i for i, p in enumerate(corpus) if not isinstance(p, str)), None)
        if bad is not None:
            raise TypeError(
                f"corpus[{bad}] is a {type(corpus[bad]).__name__}, not a str; pass the "
                "passages as strings (e.g. 'Title | text')"
            )
        if not corpus:
            raise ValueError("the corpus is empty; pass at least one passage")
        self.corpus = list(corpus)

    def scores(self, query: str) -> np.ndarray:
        """One score per corpus passage, higher is better."""
        raise NotImplementedError

    def search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` best passages, best first; ties go to the earlier passage."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}: {query!r}")
        return [
            Hit(int(i), float(s), self.corpus[i])
            for i, s in top_k(self.scores(query), k, self.min_score)
        ]

    def __call__(self, query: str, k: int) -> list[str]:
        return [hit.text for hit in self.search(query, k)]

    def identity(self) -> dict[str, Any]:
        """What decides this retriever's results: its kind, settings and a hash of the
        corpus. Equal identities retrieve the same passages for the same query."""
        import hashlib

        digest = hashlib.sha256()
        for passage in self.corpus:
            digest.update(passage.encode())
            digest.update(b"\0")
        chosen = {name: str(getattr(self, name)) for name in self.identity_keys}
        return {"type": type(self).__name__, "corpus": digest.hexdigest()[:16], **chosen}

    def __deepcopy__(self, memo: dict) -> Retriever:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.corpus)} passages)"


def top_k(scores: np.ndarray, k: int, min_score: float | None = None) -> list[tuple[int, float]]:
    """(index, score) of the ``k`` highest scores, best first, ties broken by index, so the
    same scores always give the same passages in the same order (bootstrap replays)."""
    import numpy as np

    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    candidates = np.arange(len(scores))
    if min_score is not None:
        candidates = candidates[scores > min_score]
    if len(candidates) > k:
        part = np.argpartition(-scores[candidates], k - 1)[:k]
        # Every candidate that ties with the k-th score competes, so the cut is by index.
        kth = scores[candidates[part]].min()
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))[:k]
    return [(int(candidates[i]), float(scores[candidates[i]])) for i in order]


class Retrieve(Module):
    """``Retrieve(k=3)(query)`` -> ``Prediction(passages=[...])``, as in DSPy.

    ``rm`` binds a retriever to this module; without one the module uses
    ``settings().rm`` at call time. ``k`` may be overridden per call.
    """

    def __init__(self, k: int = 3, *, rm: Any = None) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rm is not None and not callable(rm):
            raise TypeError(
                f"rm={rm!r} is not a retriever (it is not callable); pass a callable "
                "(query, k) -> list[str] such as ap.BM25Retriever(corpus)"
            )
        self.k = k
        self.rm = rm

    def forward(self, query: str, k: int | None = None) -> Prediction:
        if not isinstance(query, str):
            raise TypeError(
                f"Retrieve takes one query string, got {type(query).__name__}: {query!r}; "
                "for several queries call it once per query"
            )
        k = self.k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        rm = self.rm if self.rm is not None else settings().rm
        if rm is None:
            raise RuntimeError(
                "no retriever for Retrieve: call ap.configure(rm=...), use "
                "`with ap.context(rm=...)`, or pass Retrieve(k, rm=...)"
            )
        passages = rm(query, k)
        if not isinstance(passages, (list, tuple)) or not all(isinstance(p, str) for p in passages):
            raise TypeError(
                f"retriever {rm!r} returned {passages!r:.200}; a retriever must return a list of "
                "passage strings"
            )
        log.debug("Retrieve(k=%d): %r -> %d passages", k, query, len(passages))
        return Prediction(passages=list(passages[:k]))

    def identity(self) -> dict[str, Any]:
        """``k`` and the bound retriever's identity (a plain function: its code hash), for
        whoever must tell whether stored traces were retrieved the same way."""
        from apprentice.fingerprint import code_fingerprint

        rm = self.rm
        if rm is None:
            described: Any = None
        elif callable(getattr(rm, "identity", None)):
            described = rm.identity()
        else:
            described = {"code": code_fingerprint(rm)}
        return {"k": self.k, "rm": described}

    def __repr__(self) -> str:
        return f"Retrieve(k={self.k}{'' if self.rm is None else f', rm={self.rm!r}'})"
