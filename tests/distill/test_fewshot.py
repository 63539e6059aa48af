"""The few-shot baseline in a run's evaluation: the untrained student prompted with the
teacher's passing runs as demos, so the report can say what finetuning added."""

from __future__ import annotations

from pathlib import Path

import yaml

from apprentice.run import Run

ROOT = Path(__file__).resolve().parents[2]


def test_eval_scores_the_few_shot_student_and_the_report_shows_it(tmp_path):
    data = yaml.safe_load((ROOT / "recipes/demo/causal.yaml").read_text())
    data["data"]["train"]["args"]["n"] = 40
    data["data"]["dev"]["args"]["n"] = 8
    data["student"]["tiny"].update(hidden_size=64, num_layers=2)
    data["train"].update(epochs=1, save_every=1000)
    data["eval"].update(fewshot=2, num_threads=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))

    run = Run.open(recipe, run_dir=tmp_path / "run", progress=False)
    run.distill()
    scores = {o.stage: o.summary for o in run.outcomes}["eval"]
    assert set(scores) == {"teacher", "untrained", "fewshot", "trained"}
    assert (tmp_path / "run" / "eval" / "fewshot.json").exists()
    assert "student (untrained, few-shot)" in (tmp_path / "run/report/report.md").read_text()

    program = run._fewshot()
    assert [len(p.demos) for p in program.predictors()] == [2, 2]
    demo = program.classify.demos[0]
    assert demo.category in ("billing", "bug", "shipping") and demo.reasoning

    # A second eval reuses every saved system, the few-shot one included.
    again = Run.open(tmp_path / "run", progress=False)
    assert again.eval().status == "reused"
