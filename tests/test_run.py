"""The run directory: one process at a time, set-aside copies never lost, unique temp files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import apprentice as ap
from apprentice.files import DirectoryBusy, folder_lock
from apprentice.run import Run

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/demo/causal.yaml"
SMALL = ["data.train.args.n=6", "data.dev.args.n=2", "bootstrap.concurrency=2"]


def test_a_second_process_is_refused_while_one_holds_the_run_directory(tmp_path):
    root = tmp_path / "run"
    other = folder_lock(root)  # what another process holds: its own lock on the folder
    other.acquire(timeout=0)
    try:
        with pytest.raises(DirectoryBusy, match="in use by another apprentice process") as busy:
            Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
        assert str(root) in str(busy.value)
        assert not (root / "recipe.yaml").exists()
    finally:
        other.release()

    run = Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
    other.acquire(timeout=0)
    try:
        with pytest.raises(DirectoryBusy):
            run.bootstrap()
        assert not (root / "run.json").exists() and not (root / "traces").exists()
    finally:
        other.release()
    assert run.bootstrap().summary["traces"] == 6
    # The same process may open the directory again once a stage is over.
    assert Run.open(root, progress=False).bootstrap().summary["skipped"] == 6


def test_setting_adapters_aside_twice_keeps_both_older_copies(tmp_path):
    # What the trainer does with another training run's adapter (train/resume.py): two
    # set-asides within one second must not overwrite each other.
    from apprentice.files import set_aside

    adapter = tmp_path / "run" / "adapters" / "multitask"
    for text in ("first", "second"):
        adapter.mkdir(parents=True)
        (adapter / "weights.txt").write_text(text)
        set_aside(adapter, adapter.parent / ".previous")
    kept = sorted(p.read_text() for p in adapter.parent.glob(".previous/*/weights.txt"))
    assert kept == ["first", "second"] and not adapter.exists()


def test_writes_use_their_own_temp_files_and_leave_others_alone(tmp_path):
    # A fixed temp name ("x.tmp") is shared by two writers: one moves the other's
    # half-written file into place. Someone else's temp file must be left alone.
    foreign = tmp_path / "program.json.tmp"
    foreign.write_text("another writer's half-written file")
    ap.Predict("question -> answer").save(tmp_path / "program.json")
    assert foreign.read_text() == "another writer's half-written file"
    assert json.loads((tmp_path / "program.json").read_text())["schema"] == "apprentice.program"

    root = tmp_path / "run"
    root.mkdir()
    (root / "recipe.yaml.tmp").write_text("theirs")
    Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False)
    assert (root / "recipe.yaml.tmp").read_text() == "theirs"
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp") and p.name[0] == "."]


# -- editing the metric's code (same import path) is noticed ---------------------------------
BROKEN = "def metric(example, prediction):\n    return prediction.category == 'no such'\n"
FIXED = "def metric(example, prediction):\n    return prediction.category == example.category\n"


def _edit_metric(folder: Path, source: str) -> None:
    import sys

    (folder / "edited_metric.py").write_text(source)
    sys.modules.pop("edited_metric", None)


def test_an_edited_metric_is_not_served_the_old_traces(tmp_path, monkeypatch):
    from apprentice.recipe import RecipeError

    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_metric(tmp_path, BROKEN)
    root = tmp_path / "run"
    overrides = [*SMALL, "metric=edited_metric:metric"]
    assert Run.open(RECIPE, overrides=overrides, run_dir=root).bootstrap().summary["passing"] == 0
    _edit_metric(tmp_path, FIXED)
    # Before: the 6 traces scored by the broken metric were reused (skipped 6, ran 0).
    with pytest.raises(RecipeError, match="different metric"):
        Run.open(root, progress=False).bootstrap()


def test_an_edited_metric_rescores_the_eval(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_metric(tmp_path, BROKEN)
    root = tmp_path / "run"
    overrides = [
        *SMALL,
        "metric=edited_metric:metric",
        "eval.untrained=false",
        "eval.num_threads=2",
    ]
    run = Run.open(RECIPE, overrides=overrides, run_dir=root, progress=False)
    run.recipe.make_program().save(root / "program.json")  # an (unbound) "trained" program
    assert run.eval().summary["teacher"] == 0.0
    _edit_metric(tmp_path, FIXED)
    again = Run.open(root, progress=False).eval()
    # Before: "reused", with the broken metric's 0.0 (the key held the import path only).
    assert again.status == "ran" and again.summary["teacher"] == 1.0


def test_eval_settings_that_change_no_score_rescore_nothing(tmp_path):
    """Switching a baseline on or off, or the threads, leaves every score already on disk
    valid. Before, the whole eval section was in every system's key: a SmolLM2 ReAct run
    scored its untrained student again (19 minutes) because eval.fewshot was set to 0."""
    root = tmp_path / "run"
    overrides = [*SMALL, "eval.untrained=false", "eval.num_threads=2"]
    run = Run.open(RECIPE, overrides=overrides, run_dir=root, progress=False)
    run.recipe.make_program().save(root / "program.json")  # an (unbound) "trained" program
    assert run.eval().status == "ran"
    files = {p.name: p.read_text() for p in (root / "eval").glob("*.json")}
    assert sorted(files) == ["teacher.json", "trained.json"]
    changed = [*SMALL, "eval.untrained=false", "eval.num_threads=3", "eval.teacher=true"]
    again = Run.open(RECIPE, overrides=changed, run_dir=root, progress=False).eval()
    assert again.status == "reused"
    assert {p.name: p.read_text() for p in (root / "eval").glob("*.json")} == files


# -- the trust model: a recipe runs code; reading a run does not ------------------------------
POISON = """\
import pathlib
pathlib.Path({marker!r}).write_text("the recipe's code ran")
from recipes.demo.task import TicketTriage, make_examples, metric, teacher  # noqa: E402
"""


def _poisoned_run(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A run directory whose recipe names a module that leaves a marker when imported, with
    an evaluation result on disk (as a finished run has)."""
    import sys

    from apprentice.evaluate.report import SystemEval

    marker = tmp_path / "code-ran"
    (tmp_path / "poison_recipe.py").write_text(POISON.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "poison_recipe", raising=False)
    overrides = [
        *SMALL,
        "program=poison_recipe:TicketTriage",
        "metric=poison_recipe:metric",
        "teacher.script=poison_recipe:teacher",
        "data.train.factory=poison_recipe:make_examples",
        "data.dev.factory=poison_recipe:make_examples",
    ]
    root = tmp_path / "run"
    Run.open(RECIPE, overrides=overrides, run_dir=root, progress=False)
    (root / "eval").mkdir()
    trained = SystemEval("student (trained)", 0.75, 4, 0, 0.01, 0.02, 8, 0, 400, 40, 0.0, False)
    (root / "eval" / "trained.json").write_text(json.dumps({"key": "k", "eval": trained.to_dict()}))
    assert not marker.exists() and "poison_recipe" not in sys.modules
    return root, marker


def test_report_reads_the_stored_results_and_never_runs_the_recipes_code(tmp_path, monkeypatch):
    import sys

    from apprentice.cli import main

    root, marker = _poisoned_run(tmp_path, monkeypatch)
    assert main(["report", str(root), "-q"]) == 0
    # Before: the report stage built the job, importing the program, metric, teacher script
    # and calling the data factory of the run's recipe.
    assert not marker.exists() and "poison_recipe" not in sys.modules
    report = (root / "report" / "report.md").read_text()
    assert "student (trained)" in report and "0.750" in report
    # The same files, served: the registry reads manifests, not the recipe.
    from apprentice.serve.servable import find_servable

    with pytest.raises(FileNotFoundError):
        find_servable(root)  # no adapters in this run
    assert not marker.exists() and "poison_recipe" not in sys.modules
    # A stage that runs the program does import it: that is the recipe's contract.
    Run.open(root, progress=False).bootstrap()
    assert marker.exists()


def _openai_recipe(tmp_path: Path, base_url: str) -> Path:
    import yaml

    data = yaml.safe_load(RECIPE.read_text())
    data["teacher"] = {
        "backend": "openai",
        "model": "m",
        "base_url": base_url,
        "api_key_env": "AWS_SECRET_ACCESS_KEY",
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://OpenRouter.ai/api/v1",
        "http://localhost:8000/v1",
        "http://127.0.0.2:9/v1",
        "http://[::1]:8000/v1",
    ],
)
def test_a_key_goes_to_known_providers_and_this_machine(tmp_path, monkeypatch, url):
    from apprentice.lm.openai import OpenAILM
    from apprentice.recipe import load_recipe

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("APPRENTICE_ALLOW_KEY_HOSTS", raising=False)
    assert isinstance(load_recipe(_openai_recipe(tmp_path, url)).make_teacher(), OpenAILM)


def test_a_key_for_another_host_is_refused_unless_the_user_allows_that_host(
    tmp_path, monkeypatch, capsys
):
    from apprentice.cli import main
    from apprentice.lm.openai import OpenAILM
    from apprentice.recipe import RecipeError, load_recipe

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("APPRENTICE_ALLOW_KEY_HOSTS", raising=False)
    # The user name is what a URL shows; the host is what receives the key.
    path = _openai_recipe(tmp_path, "https://api.openai.com@collect.example.net/v1")
    recipe = load_recipe(path)
    # Before: an OpenAILM that sent $AWS_SECRET_ACCESS_KEY to collect.example.net.
    with pytest.raises(RecipeError, match=r"\$AWS_SECRET_ACCESS_KEY to 'collect.example.net'"):
        recipe.make_teacher()
    # From the command line: refused before any request, in one line naming the flag.
    code = main(["bootstrap", str(path), "--run-dir", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "--allow-key-host collect.example.net" in err
    assert not (tmp_path / "run" / "traces").exists()
    # Allowed by the user: the flag (through Run) or the environment.
    allowed = recipe.make_teacher(allow_key_hosts=("collect.example.net",))
    assert isinstance(allowed, OpenAILM)
    run = Run.open(
        path, run_dir=tmp_path / "run", progress=False, allow_key_hosts=("collect.example.net",)
    )
    assert isinstance(run.job.make_teacher(tmp_path / "cache"), OpenAILM)
    monkeypatch.setenv("APPRENTICE_ALLOW_KEY_HOSTS", "other.example, collect.example.net")
    assert isinstance(recipe.make_teacher(), OpenAILM)
    # Another host is still refused, and the recipe cannot vouch for itself (no such key).
    with pytest.raises(RecipeError, match="'evil.example'"):
        load_recipe(_openai_recipe(tmp_path, "https://evil.example/v1")).make_teacher()


# -- the teacher's cache outlives the run directory ------------------------------------------
def _cached(root: Path) -> list[bool]:
    from apprentice.traces import TraceStore

    return [step.cached for trace in TraceStore(root / "traces") for step in trace.steps]


def test_a_new_run_dir_or_reset_traces_does_not_pay_the_teacher_again(tmp_path):
    from apprentice.cli import main

    first = Run.open(RECIPE, overrides=SMALL, run_dir=tmp_path / "a", progress=False)
    first.bootstrap()
    assert _cached(tmp_path / "a") == [False] * 12  # 6 examples, 2 steps each

    # Before: the cache was runs/<name>/cache/, so the advice "use a new --run-dir" paid again.
    Run.open(RECIPE, overrides=SMALL, run_dir=tmp_path / "b", progress=False).bootstrap()
    assert _cached(tmp_path / "b") == [True] * 12
    assert not (tmp_path / "a" / "cache").exists()

    argv = ["bootstrap", str(tmp_path / "a"), "--reset-traces", "-q"]
    assert main(argv) == 0
    assert _cached(tmp_path / "a") == [True] * 12
    assert len(list((tmp_path / "a" / "traces").glob("traces.*.jsonl"))) == 1  # set aside


def test_a_larger_training_set_adds_traces_instead_of_refusing(tmp_path):
    root = tmp_path / "run"
    Run.open(RECIPE, overrides=SMALL, run_dir=root, progress=False).bootstrap()
    # Before: "holds traces for a different dataset ... use a new --run-dir".
    grown = Run.open(root, overrides=["data.train.args.n=9"], progress=False).bootstrap()
    assert (grown.summary["skipped"], grown.summary["ran"], grown.summary["traces"]) == (6, 3, 9)


def test_teacher_extra_body_reaches_the_lm_and_is_part_of_the_teachers_identity(
    tmp_path, monkeypatch
):
    import yaml

    from apprentice.recipe import RecipeError, load_recipe

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    path = _openai_recipe(tmp_path, "https://api.openai.com/v1")
    data = yaml.safe_load(path.read_text())
    data["teacher"]["extra_body"] = {"reasoning_effort": "low", "max_completion_tokens": 4096}
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    lm = recipe.make_teacher()
    assert lm.extra_body == {"reasoning_effort": "low", "max_completion_tokens": 4096}
    other = load_recipe(path, ["teacher.extra_body.reasoning_effort=high"])
    assert other.section_hash("teacher") != recipe.section_hash("teacher")
    with pytest.raises(RecipeError, match="teacher.extra_body goes to an endpoint"):
        load_recipe(RECIPE, ["teacher.extra_body.top_k=5"])


def test_bootstrap_stops_at_the_cost_cap_and_a_higher_cap_goes_on(tmp_path, monkeypatch):
    from apprentice.pipeline import StageError

    monkeypatch.setenv("APPRENTICE_CACHE_DIR", str(tmp_path / "cache"))  # every call is paid
    # The scripted teacher counts words as tokens: at $1 a token, each example (two calls,
    # ~100 words each) costs ~$200, so a $300 cap stops after the first runs.
    overrides = [
        "data.train.args.n=12",
        "bootstrap.concurrency=1",
        "teacher.price.input=1000000",
        "teacher.price.output=1000000",
    ]
    root = tmp_path / "run"
    run = Run.open(RECIPE, overrides=[*overrides, "bootstrap.max_cost_usd=300"], run_dir=root)
    with pytest.raises(StageError, match=r"stopped at the teacher cost cap: \$\d+\.\d+ spent of"):
        run.bootstrap()
    summary = run.state()["stages"]["bootstrap"]["summary"]
    traced = summary["traces"]
    assert 1 <= traced < 12 and summary["stopped_at_cost"]
    spent = summary["teacher_cost_usd_total"]
    assert 300 <= spent < 300 + 2 * 400  # in-flight runs finish: one or two past the cap
    # The same cap again: spent already, nothing new runs, the same clear stop.
    again = Run.open(root, overrides=[*overrides, "bootstrap.max_cost_usd=300"])
    with pytest.raises(StageError, match="Raise the cap and run again"):
        again.bootstrap()
    assert again.state()["stages"]["bootstrap"]["summary"]["traces"] == traced
    # A higher cap traces the rest, paying only for what was not traced.
    done = Run.open(root, overrides=[*overrides, "bootstrap.max_cost_usd=100000"]).bootstrap()
    assert done.summary["traces"] == 12 and done.summary["skipped"] == traced
    assert done.summary["teacher_cost_usd_total"] < spent / traced * 12 * 1.5
    assert not done.summary["stopped_at_cost"]


@pytest.mark.parametrize(
    ("trained", "prompted"), [("baked", "chat"), ("chat", "chat"), ("json", "json")]
)
def test_the_prompted_baselines_read_the_full_prompt_when_the_student_is_baked(
    tmp_path, trained, prompted
):
    # The untrained and few-shot students learnt nothing: a baked prompt (no instructions,
    # no field descriptions) would score them on a prompt made for an adapter.
    overrides = [*SMALL, f"dataset.format={trained}"]
    run = Run.open(RECIPE, overrides=overrides, run_dir=tmp_path / "run", progress=False)
    assert run.student_format().name == trained
    assert run.prompted_format().name == prompted
