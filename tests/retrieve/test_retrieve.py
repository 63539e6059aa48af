"""Retrieve and its retrievers: BM25 over a small corpus, configure(rm=) and per-module rm,
and the passages reaching the trace and the training rows."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import apprentice as ap
from apprentice.dataset.build import build_dataset, load_dataset_dir
from apprentice.retrieve import top_k
from apprentice.traces import bootstrap_traces, run_traced

CORPUS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "The Loire is the longest river in France.",
    "Cats sleep for most of the day.",
    "Madrid is the capital of Spain.",
]


@pytest.fixture(scope="module")
def bm25():
    return ap.BM25Retriever(CORPUS)


def test_bm25_ranks_the_passage_that_shares_the_rare_terms_first(bm25):
    hits = bm25.search("What is the capital of France?", 4)
    assert hits[0].text == CORPUS[0]
    # Berlin and Madrid tie on "capital" (same length): the earlier passage comes first.
    assert [h.index for h in hits] == [0, 2, 1, 4]
    assert hits[0].score > hits[1].score > hits[2].score == hits[3].score > 0
    assert len(bm25("capital", 2)) == 2


def test_bm25_returns_no_passage_rather_than_arbitrary_ones(bm25):
    assert bm25("quantum chromodynamics", 3) == []
    assert bm25("the of is", 3) == []  # stopwords only


def test_top_k_breaks_ties_by_corpus_order():
    scores = np.array([0.5, 1.0, 0.5, 1.0, 0.5, 0.0])
    assert top_k(scores, 3) == [(1, 1.0), (3, 1.0), (0, 0.5)]
    assert top_k(scores, 10, min_score=0.0) == [(1, 1.0), (3, 1.0), (0, 0.5), (2, 0.5), (4, 0.5)]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(scores, 0)


def test_retrieve_with_its_own_retriever(bm25):
    retrieve = ap.Retrieve(k=2, rm=bm25)
    pred = retrieve("capital of Spain")
    assert isinstance(pred, ap.Prediction)
    assert pred.passages[0] == CORPUS[4] and len(pred.passages) == 2
    assert len(retrieve("capital", k=3).passages) == 3


def test_retrieve_uses_the_configured_retriever_and_context_overrides_it(bm25):
    ap.configure(rm=bm25)
    retrieve = ap.Retrieve(k=1)
    assert retrieve("longest river").passages == [CORPUS[2]]

    def shelf(query: str, k: int) -> list[str]:  # any callable is a retriever
        return [f"note about {query}"] * k

    with ap.context(rm=shelf):
        assert retrieve("cats").passages == ["note about cats"]
    assert retrieve("cats").passages == [CORPUS[3]]
    assert ap.Retrieve(k=1, rm=shelf)("x").passages == ["note about x"]  # own beats configured


def test_retrieve_errors_say_what_to_do():
    with pytest.raises(RuntimeError, match=r"configure\(rm=\.\.\.\)"):
        ap.Retrieve(k=1)("anything")
    with pytest.raises(TypeError, match="list of passage strings"):
        ap.Retrieve(k=1, rm=lambda q, k: "just one string")("q")
    with pytest.raises(TypeError, match="not a retriever"):
        ap.configure(rm="bm25")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ap.Retrieve(k=0)
    with pytest.raises(TypeError, match="once per query"):
        ap.Retrieve(k=1, rm=lambda q, k: [])(["a", "b"])


def test_a_copied_program_shares_the_index(bm25):
    program = RAG(bm25)
    clone = program.deepcopy()
    assert clone.retrieve.rm is bm25 and copy.deepcopy(bm25) is bm25
    assert [p for p, _ in program.named_predictors()] == ["answer"]  # Retrieve is no predictor


class Answer(ap.Signature):
    """Answer from the context."""

    context: list[str] = ap.InputField()
    question: str = ap.InputField()
    answer: str = ap.OutputField()


class RAG(ap.Module):
    def __init__(self, rm) -> None:
        self.retrieve = ap.Retrieve(k=2, rm=rm)
        self.answer = ap.Predict(Answer)

    def forward(self, question: str) -> ap.Prediction:
        context = self.retrieve(question).passages
        return ap.Prediction(
            context=context, answer=self.answer(context=context, question=question).answer
        )


def _teacher(signature, inputs):
    first = inputs["context"][0] if inputs["context"] else "unknown"
    return {"answer": first.split(" is ")[0]}


QUESTIONS = [
    ap.Example(question=q, answer=a).with_inputs("question")
    for q, a in [
        ("capital of France", "Paris"),
        ("capital of Germany", "Berlin"),
        ("capital of Spain", "Madrid"),
    ]
]


def test_the_passages_the_teacher_saw_are_in_the_trace_and_the_training_rows(bm25, tmp_path):
    program = RAG(bm25)
    program.set_lm(ap.ScriptedLM(_teacher))
    trace = run_traced(program, QUESTIONS[0])
    (step,) = trace.steps  # the LM call only: retrieval is not an LM step
    assert step.predictor == "answer"
    assert step.inputs["context"] == bm25("capital of France", 2)
    assert trace.prediction["context"] == step.inputs["context"]

    metric = lambda example, pred, trace=None: float(pred.answer == example.answer)  # noqa: E731
    store = tmp_path / "traces"
    result = bootstrap_traces(
        RAG(bm25),
        QUESTIONS,
        store=store,
        teacher=ap.ScriptedLM(_teacher),
        metric=metric,
        progress=False,
    )
    assert result.kept == 3
    # The rows are rendered from the recorded inputs: change the corpus afterwards and the
    # rows still hold what the teacher saw.
    other = ap.BM25Retriever(["Nothing relevant here at all."])
    build_dataset(store, RAG(other), tmp_path / "data", val_fraction=0.0)
    data, manifest = load_dataset_dir(tmp_path / "data")
    assert manifest.drops == {}
    rows = {r["example_id"]: r for r in data["train"]}
    assert len(rows) == 3
    for row in rows.values():
        prompt = row["messages"][-1]["content"]
        question = prompt.split("[[question]]\n")[1].split("\n")[0]
        for passage in bm25(question, 2):
            assert passage in prompt
        assert "Nothing relevant" not in prompt
        assert row["completion"].endswith(bm25(question, 1)[0].split(" is ")[0])


def test_bootstrap_replays_the_same_passages(bm25, tmp_path):
    runs = []
    for name in ("a", "b"):
        bootstrap_traces(
            RAG(bm25),
            QUESTIONS,
            store=tmp_path / name,
            teacher=ap.ScriptedLM(_teacher),
            progress=False,
        )
        lines = (tmp_path / name / "traces.jsonl").read_text().splitlines()
        runs.append(
            sorted(json.dumps(json.loads(x)["steps"][0]["inputs"], sort_keys=True) for x in lines)
        )
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_identity_changes_with_the_corpus_the_settings_and_k(bm25):
    same = ap.BM25Retriever(list(CORPUS))
    assert same.identity() == bm25.identity()
    assert ap.BM25Retriever(CORPUS[:-1]).identity() != bm25.identity()
    assert ap.BM25Retriever(CORPUS, k1=1.2).identity() != bm25.identity()
    assert ap.Retrieve(k=2, rm=bm25).identity() != ap.Retrieve(k=3, rm=bm25).identity()
    assert ap.Retrieve(k=2, rm=bm25).identity() == ap.Retrieve(k=2, rm=same).identity()


def test_stored_traces_follow_k_and_the_corpus():
    # Traces record the passages the teacher saw; a program that retrieves differently
    # (another k, another corpus) must not reuse them.
    from apprentice.traces.bootstrap import program_hash

    class RAG(ap.Module):
        def __init__(self, k: int, corpus: list[str]) -> None:
            self.retrieve = ap.Retrieve(k=k, rm=ap.BM25Retriever(corpus))
            self.answer = ap.Predict("context, question -> answer")

        def forward(self, question: str):
            context = self.retrieve(question).passages
            return self.answer(context=context, question=question)

    base = program_hash(RAG(2, CORPUS))
    assert program_hash(RAG(2, CORPUS)) == base
    assert program_hash(RAG(3, CORPUS)) != base
    assert program_hash(RAG(2, [*CORPUS, "another passage"])) != base
