"""BM25 over a local corpus, with ``bm25s`` (sparse scores in numpy: ~2 ms a query on 100k
passages, against ~84 ms for ``rank-bm25``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from apprentice.retrieve.retrieve import Retriever

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BM25Retriever"]

log = logging.getLogger(__name__)


def _import_bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError(
            "BM25Retriever needs the bm25s package: pip install 'apprentice[retrieve]'"
        ) from None
    return bm25s


class BM25Retriever(Retriever):
    """``BM25Retriever(corpus)``: lexical search, built once (the index is shared by copies).

    ``stopwords`` is a language code bm25s knows ("en") or None; ``k1`` and ``b`` are the
    usual BM25 parameters. Passages that share no term with the query are never returned,
    so a query with no known word returns no passages rather than arbitrary ones.
    """

    min_score = 0.0
    identity_keys = ("stopwords", "k1", "b")

    def __init__(
        self,
        corpus: Sequence[str],
        *,
        stopwords: str | None = "en",
        k1: float = 1.5,
        b: float = 0.75,
    ) -> None:
        super().__init__(corpus)
        bm25s = _import_bm25s()
        self.stopwords, self.k1, self.b = stopwords, k1, b
        tokens = bm25s.tokenize(
            self.corpus, stopwords=stopwords, return_ids=False, show_progress=False
        )
        self._index = bm25s.BM25(k1=k1, b=b)
        self._index.index(tokens, show_progress=False)
        log.info("BM25Retriever: indexed %d passages", len(self.corpus))

    def scores(self, query: str) -> np.ndarray:
        bm25s = _import_bm25s()
        tokens = bm25s.tokenize(
            [query], stopwords=self.stopwords, return_ids=False, show_progress=False
        )[0]
        if not tokens:  # only stopwords: no passage matches
            import numpy as np

            return np.zeros(len(self.corpus), dtype=np.float32)
        return self._index.get_scores(tokens)
