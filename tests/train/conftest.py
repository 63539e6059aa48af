"""Shared fixtures: a bootstrapped demo dataset and tiny students built from config."""

from __future__ import annotations

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset import build_dataset, load_dataset_dir
from apprentice.formats import messages_to_prompt
from apprentice.traces import bootstrap_traces
from apprentice.train.tiny import make_tiny_student


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-data")
    bootstrap_traces(
        TicketTriage(),
        make_examples(60),
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        store=root / "traces",
        progress=False,
    )
    build_dataset(root / "traces", TicketTriage(), root / "dataset", threshold=1.0)
    return root / "dataset"


@pytest.fixture(scope="session")
def corpus(demo_dataset):
    data, _ = load_dataset_dir(demo_dataset)
    return [messages_to_prompt(r["messages"]) + r["completion"] for r in data["train"]]


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory, corpus):
    return make_tiny_student(
        "causal",
        corpus,
        tmp_path_factory.mktemp("causal"),
        hidden_size=64,
        num_layers=2,
        vocab_size=400,
    )


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, corpus):
    return make_tiny_student(
        "seq2seq",
        corpus,
        tmp_path_factory.mktemp("t5"),
        hidden_size=64,
        num_layers=2,
        vocab_size=400,
    )
