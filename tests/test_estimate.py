"""`apprentice distill RECIPE --dry-run`: the teacher's calls, tokens and cost estimated
from a sample, with nothing sent and nothing written."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Literal

import yaml

import apprentice as ap
from apprentice.cli import main
from apprentice.estimate import StandInLM, estimate_teacher
from apprentice.run import Run, locate

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/demo/causal.yaml"


def test_a_dry_run_estimates_without_a_key_a_call_or_a_file(tmp_path, capsys, monkeypatch):
    data = yaml.safe_load(RECIPE.read_text())
    data["teacher"] = {
        "backend": "openai",
        "model": "gpt-4o-mini",
        "base_url": "https://api.openai.com/v1",
        "api_key_env": "NO_SUCH_KEY_VARIABLE",  # not set: a real run would refuse to start
        "max_tokens": 256,
        "price": {"input": 0.15, "output": 0.60},
    }
    data["data"]["train"]["args"]["n"] = 50
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    run_dir = tmp_path / "run"
    assert main(["distill", str(recipe), "--run-dir", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("teacher estimate (dry run, nothing sent): 50 examples to trace")
    assert "calls: ~100 (2.00 per example)" in out  # classify, then extract
    low, high = (float(x) for x in re.search(r"cost: \$([\d.]+) to \$([\d.]+)", out).groups())
    assert 0 < low < high
    assert not run_dir.exists()


def test_the_estimate_counts_what_the_bootstrap_would_run(tmp_path):
    overrides = ["data.train.args.n=8", "bootstrap.concurrency=2"]
    root = tmp_path / "run"
    recipe, _ = locate(RECIPE, overrides, root)
    before = estimate_teacher(recipe, root)
    assert (before.examples, before.sampled, before.ended_early) == (8, 8, 0)
    done = Run.open(RECIPE, overrides=overrides, run_dir=root, progress=False).bootstrap()
    # The real run makes the calls the stand-in counted.
    assert done.summary["calls"] == before.calls == 16
    after = estimate_teacher(recipe, root)
    assert after.examples == 0 and after.calls == 0  # traced examples are not paid again
    grown, _ = locate(RECIPE, ["data.train.args.n=12"], root)
    assert estimate_teacher(grown, root).examples == 4


class Mood(enum.Enum):
    UP = "up"


class Everything(ap.Signature):
    """Answer."""

    question: str = ap.InputField()
    label: Literal["a", "b"] = ap.OutputField()
    count: int = ap.OutputField()
    ratio: float = ap.OutputField()
    ok: bool = ap.OutputField()
    tags: list[str] = ap.OutputField()
    extra: dict[str, int] = ap.OutputField()
    mood: Mood = ap.OutputField()
    text: str = ap.OutputField()


def test_the_stand_in_answers_every_field_type_with_a_reply_that_parses():
    reply = ap.Predict(Everything, lm=StandInLM())(question="q")
    got = (reply.label, reply.count, reply.ok, reply.tags, reply.extra, reply.mood)
    assert got == ("a", 0, False, [], {}, Mood.UP)
