"""recipes/xmc: infer-retrieve-rank over 500 labels with a scripted teacher."""

from __future__ import annotations

import pytest
from recipes.xmc.task import (
    LABELS,
    ClassifyDirectly,
    InferRetrieveRank,
    label_retriever,
    make_examples,
    metric,
    teacher,
)

import apprentice as ap
from apprentice.dataset.build import build_dataset, load_dataset_dir
from apprentice.traces import bootstrap_traces


def test_the_label_set_has_500_distinct_labels():
    assert len(LABELS) == len(set(LABELS)) == 500


def test_the_teacher_solves_held_out_messages_through_retrieval():
    program = InferRetrieveRank(k=10)
    program.set_lm(ap.ScriptedLM(teacher))
    dev = make_examples(100, seed=7)
    result = ap.Evaluate(devset=dev, metric=metric, display_progress=False)(program)
    assert result.score == 1.0
    pred = program(text=dev[0].text)
    assert len(pred.candidates) == 10 and pred.label in pred.candidates
    assert pred.label in LABELS


def test_retrieval_recovers_a_rough_guess():
    # A guess that is no label at all still brings the right label among the candidates.
    assert "printer: too slow" in label_retriever()("my printer is slow", 10)
    assert label_retriever()("dishwasher leaking", 1) == ["dishwasher: leaking"]


def test_both_calls_become_training_rows_with_the_candidates_the_teacher_saw(tmp_path):
    examples = make_examples(20, seed=1)
    bootstrap_traces(
        InferRetrieveRank(),
        examples,
        store=tmp_path / "traces",
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        threshold=1.0,
        progress=False,
    )
    manifest = build_dataset(
        tmp_path / "traces", InferRetrieveRank(), tmp_path / "data", val_fraction=0.0
    )
    assert manifest.counts["train"] == {"infer": 20, "rank": 20}
    data, _ = load_dataset_dir(tmp_path / "data")
    rank_rows = [r for r in data["train"] if r["predictor"] == "rank"]
    assert len(rank_rows) == 20
    for row in rank_rows:
        prompt = row["messages"][-1]["content"]
        label = row["completion"].split("[[label]]\n")[1]
        section = prompt.split("[[candidates]]\n")[1].split("\n\n")[0]
        shown = [line.split("] ", 1)[1] for line in section.splitlines()]
        # What the retriever returned for the teacher's guess, in its order.
        assert shown == label_retriever()(label, 10) and label in shown


def test_the_naive_prompt_lists_each_label_once_and_a_bad_label_errs_briefly():
    system = ap.ChatFormat().render(ClassifyDirectly, [], {"text": "x"})[0]["content"]
    assert system.count("dishwasher: leaking") == 1
    assert len(system) < 14_500  # was ~28k with every label written twice
    lm = ap.ScriptedLM(lambda signature, inputs: {"label": "dishwasher: leak"})
    with pytest.raises(ap.ParseError) as info:
        ap.Predict(ClassifyDirectly, lm=lm)(text="My dishwasher has a leak.")
    assert len(str(info.value)) < 400
    assert "'dishwasher: leak' is not one of the 500 allowed values" in str(info.value)
    assert "'dishwasher: leaking'" in str(info.value)
