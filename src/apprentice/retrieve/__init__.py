"""Retrieval: the Retrieve module and the retrievers it can use (BM25, dense embeddings)."""

from apprentice.retrieve.bm25 import BM25Retriever
from apprentice.retrieve.dense import DenseRetriever
from apprentice.retrieve.retrieve import Hit, Retrieve, Retriever, top_k

__all__ = ["BM25Retriever", "DenseRetriever", "Hit", "Retrieve", "Retriever", "top_k"]
