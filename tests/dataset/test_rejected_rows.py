"""Suggest re-runs in the data: rejected queries never become rows, corrected ones do, and a
corrected row is the plain call (inputs -> corrected query), without the feedback inputs."""

from __future__ import annotations

import pytest
from recipes.multihop.task import MultiHop, good_queries, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset import build_dataset, load_dataset_dir
from apprentice.traces import TraceStore, bootstrap_traces


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("multihop") / "traces"
    result = bootstrap_traces(
        MultiHop(),
        make_examples(60),
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        store=path,
        progress=False,
    )
    assert result.kept == result.ran  # the teacher recovers from every bad query
    assert result.rejected_steps > 0  # ...after Suggest re-ran it
    return path


def _query_rows(data):
    """(predictor, question, query) of every query row."""
    found = []
    for split in data.values():
        for row in split:
            if row["predictor"].startswith("generate_query"):
                prompt = row["messages"][-1]["content"]
                question = prompt.split("[[question]]\n", 1)[1].split("\n")[0]
                query = row["completion"].split("[[query]]\n", 1)[1].strip()
                found.append((row["predictor"], question, query))
    return found


def _key(step):
    return step.predictor, step.inputs["question"], step.output["query"]


def test_rows_hold_the_corrected_queries_and_never_the_rejected_ones(store, tmp_path):
    traces = list(TraceStore(store))
    rejected = [s for t in traces for s in t.steps if s.rejected]
    # The queries a Suggest failed on (the other rejected steps are the same attempt's
    # earlier calls, run again after it).
    bad = {_key(s) for s in rejected if s.rejection.startswith("Suggest failed")}
    # The accepted re-runs (a re-run whose later hop failed again is rejected in its turn).
    corrected = {
        _key(s) for t in traces for s in t.steps if "feedback" in s.inputs and not s.rejected
    }
    assert bad and corrected
    manifest = build_dataset(store, MultiHop(), tmp_path / "ds", val_fraction=0.0)
    assert manifest.drops["rejected attempt"] == len(rejected)
    assert "predictor not in program" not in manifest.drops
    data, _ = load_dataset_dir(tmp_path / "ds")
    rows = _query_rows(data)
    assert not bad & set(rows)
    assert corrected <= set(rows)
    # Every query row is a careful query for its question and hop.
    for predictor, question, query in rows:
        assert query == good_queries(question)[int(predictor[-1])], (predictor, question, query)


def test_a_corrected_row_is_the_plain_prompt_without_feedback(store, tmp_path):
    build_dataset(store, MultiHop(), tmp_path / "ds", val_fraction=0.0)
    data, _ = load_dataset_dir(tmp_path / "ds")
    # The student is served without feedback first, so the row that teaches most is the
    # question -> the corrected query: no past_query / feedback in any prompt.
    for row in data["train"]:
        prompt = "".join(m["content"] for m in row["messages"])
        assert "past_query" not in prompt and "[[feedback]]" not in prompt
