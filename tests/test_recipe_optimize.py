"""A recipe's optimize section: BetterTogether from YAML, run as the `optimize` stage of
`apprentice distill` on the shrunken demo (tests/tiny_run.py), every step's score in the
stage's result, run.json and the report; bad sections refused at load, naming the value."""

from __future__ import annotations

import json

import pytest

from apprentice.cli import _short, main
from apprentice.recipe import RecipeError, load_recipe
from apprentice.recipe_optimize import split_valset
from apprentice.run import Run
from tiny_run import ROOT, SHORT

TOGETHER = ROOT / "recipes/demo/together.yaml"
CAUSAL = ROOT / "recipes/demo/causal.yaml"

PROPOSED = "Classify the ticket; then copy its order id exactly."
proposals: list[dict] = []


def propose(signature, inputs):
    """The GEPA proposer of the test recipe: records what it read, proposes one text."""
    proposals.append(dict(inputs))
    return {"new_instruction": PROPOSED}


@pytest.mark.slow
def test_p_w_p_runs_as_a_stage_and_every_steps_score_is_reported(tmp_path):
    root = tmp_path / "run"
    run = Run.open(TOGETHER, overrides=SHORT, run_dir=root, progress=False)
    run.distill()
    stages = [o.stage for o in run.outcomes]
    assert stages == ["bootstrap", "dataset", "train", "bind", "optimize", "bind", "eval"] + [
        "report"
    ]

    result = json.loads((root / "optimize/result.json").read_text())
    steps = result["steps"]
    assert [(s["index"], s["step"]) for s in steps] == [(0, "start"), (1, "p"), (2, "w"), (3, "p")]
    assert (result["trainset"], result["valset"]) == (6, 2)  # 20% of 8 held out
    # The first p step's demos are the teacher's runs the bootstrap stage already paid
    # for (cached); the w step asks the teacher again: its program's prompts carry demos.
    assert [(s["teacher_calls"], s["teacher_cached_calls"]) for s in steps[:3]] == [
        (0, 0),
        (0, 4),
        (12, 0),
    ]
    assert all(s["seconds"] > 0 for s in steps[1:])
    assert run.state()["stages"]["optimize"]["summary"]["steps"] == steps
    line = _short("optimize", run.outcomes[4].summary)  # what `apprentice distill` prints
    scores = ", ".join(f"{s['step']} {s['score']:.3f}" for s in steps)
    assert line == f"p -> w -> p on 2 held out: {scores}; kept {result['kept']}"

    # Each step's program is saved; the p step put 2 demos on each predictor, and the w
    # step trained on traces of that program (its demos are in every training prompt).
    p_state = json.loads((root / "optimize/step1-p.json").read_text())["predictors"]
    assert {path: len(s["demos"]) for path, s in p_state.items()} == {
        "classify": 2,
        "extract": 2,
    }
    from apprentice.dataset import load_dataset_dir

    weights = next((root / "optimize/weights").iterdir())
    data, _ = load_dataset_dir(weights / "dataset")
    demo_ticket = p_state["extract"]["demos"][0]["ticket"]
    rows = list(data["train"]) + list(data["validation"])
    assert len(rows) == 2 * 6  # two predictors, the 6 examples the steps learn from
    assert all(demo_ticket in json.dumps(r["messages"]) for r in rows)
    w_state = json.loads((root / "optimize/step2-w.json").read_text())["predictors"]
    assert str(weights / "adapters") in json.dumps(w_state)

    # The kept program is the step result.json names, scored on the dev set by eval.
    kept = json.loads(
        (root / f"optimize/step{result['kept']}-{steps[result['kept']]['step']}.json").read_text()
    )
    assert json.loads((root / "optimize/program.json").read_text()) == kept
    optimized = json.loads((root / "eval/optimized.json").read_text())["eval"]
    assert optimized["name"] == "student (BetterTogether)" and optimized["n"] == 2

    report = (root / "report/report.md").read_text()
    assert "## Optimize: BetterTogether `p -> w -> p`" in report
    for s in steps:
        label = {"start": "start", "p": "bootstrap_fewshot", "w": "bootstrap_finetune"}
        calls = f"{s['teacher_calls']} ({s['teacher_cached_calls']})"
        row = f"| {s['index']}: {s['step']} | {label[s['step']]} | {s['score']:.3f} | {calls} |"
        assert row in report
    assert f"kept program scores **{optimized['score']:.3f}** on the 2 held-out dev" in report
    assert report.count("| yes |") == 1

    # A rerun reuses the stage: no teacher call, no training, the same result.
    again = Run.open(TOGETHER, overrides=SHORT, run_dir=root, progress=False)
    again.distill()
    status = {o.stage: o.status for o in again.outcomes}
    assert status["optimize"] == status["eval"] == "reused"
    assert json.loads((root / "optimize/result.json").read_text()) == result
    # How the weight steps run or report (logging, tracking) is not what they learn.
    logged = Run.open(TOGETHER, overrides=[*SHORT, "train.logging_steps=7"], run_dir=root)
    assert logged.optimize().status == "reused"

    # Without the section, the report shows no step table and no stale BetterTogether row.
    plain = Run.open(TOGETHER, overrides=[*SHORT, "optimize=null"], run_dir=root, progress=False)
    plain.report()
    report = (root / "report/report.md").read_text()
    assert "BetterTogether" not in report and "student (trained)" in report


@pytest.mark.slow
def test_gepa_from_a_recipe_asks_the_proposer_the_recipe_names(tmp_path):
    proposals.clear()
    gepa = (
        "optimize.prompt={name: gepa, max_metric_calls: 10, reflection_minibatch_size: 2, "
        "proposer: {backend: scripted, script: 'test_recipe_optimize:propose'}}"
    )
    run = Run.open(
        TOGETHER,
        overrides=[*SHORT, "optimize.strategy=p", gepa],
        run_dir=tmp_path / "run",
        progress=False,
    )
    for stage in ("bootstrap", "dataset", "optimize"):
        getattr(run, stage)()
    result = json.loads((tmp_path / "run/optimize/result.json").read_text())
    assert result["prompt_optimizer"] == "gepa"
    assert [s["step"] for s in result["steps"]] == ["start", "p"]
    # The untrained student fails every run, so the proposer read failures and the
    # expected answers; its instruction did no better, so the start's is kept.
    assert proposals
    assert "The program failed" in proposals[0]["examples"]
    assert result["kept"] == 0
    kept = json.loads((tmp_path / "run/optimize/program.json").read_text())
    instructions = {p: s["signature"]["instructions"] for p, s in kept["predictors"].items()}
    assert PROPOSED not in instructions.values()
    # The teacher was not the proposer: GEPA made no teacher call.
    assert result["steps"][1]["teacher_calls"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimize.strategy=p -> x", "strategy 'p -> x' is not a chain of 'p'"),
        ("optimize.strategy=''", "strategy '' is not a chain of 'p'"),
        ("optimize.prompt.name=mipro", "prompt optimizer name 'mipro' is not one of"),
        ("optimize.prompt={max_bootstrapped_demos: 2}", "prompt optimizer name None is not"),
        ("optimize.prompt={name: gepa}", "give gepa exactly one budget"),
        ("optimize.weights.name=full", "optimize.weights.name: Input should be"),
        (
            "optimize.prompt={name: bootstrap_fewshot, max_demos: 2}",
            "unknown key 'optimize.prompt.max_demos'; did you mean 'max_labeled_demos'",
        ),
        (
            "optimize.prompt={name: gepa, max_metric_calls: 5, proposer: {backend: scripted}}",
            "optimize.prompt.proposer: backend 'scripted' needs script",
        ),
        ("optimize.val_fraction=1", "optimize.val_fraction: Input should be less than 1"),
    ],
)
def test_a_bad_optimize_section_is_refused_at_load_naming_it(override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(TOGETHER, [override])


def test_the_strategy_is_written_in_one_spelling_and_the_section_is_optional():
    assert load_recipe(TOGETHER, ["optimize.strategy=w->p"]).optimize.strategy == "w -> p"
    assert load_recipe(CAUSAL).optimize is None


def test_optimize_without_the_section_says_how_to_add_one(tmp_path, capsys):
    code = main(["optimize", str(CAUSAL), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert "has no optimize section: add one" in err and "recipes/demo/together.yaml" in err


def test_the_valset_is_held_out_of_the_training_examples():
    examples = list(range(10))
    train, val = split_valset(examples, 0.2)
    assert len(val) == 2 and sorted(train + val) == examples
    assert split_valset(examples, 0.2) == (train, val)  # the same split every run
    assert split_valset(examples, 0) == (examples, examples)
    for fraction in (0.01, 0.99):  # at least one held out, at least one left to learn from
        assert [len(part) for part in split_valset([1, 2], fraction)] == [1, 1]
    with pytest.raises(ValueError, match="needs at least 2 training examples"):
        split_valset([1], 0.2)
