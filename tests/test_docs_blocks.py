"""Every Python and shell block of README.md and docs/*.md runs or is checked (issue 23,
item 1), so an example in the docs cannot rot unnoticed.

- Every fence names its language (``text`` for output, layouts and diagrams).
- A Python block runs alone: a fresh namespace, a fresh working directory (a reader can
  paste any one block). Where it names a hosted endpoint or a model that is not on this
  machine, PYTHON_BLOCKS lists each text substitution made and why; every substituted
  text must still be in the block. The stand-in endpoint is a loopback OpenAI-compatible
  server (tests/lm/stub_server.py) answering as the demo's rule teacher does.
- A shell block is listed in SHELL_BLOCKS, and each of its commands is one of:
  - run here (``run``): as written, in block order, each a subprocess in a temporary
    working directory (this environment's ``apprentice`` first on PATH, the repository on
    PYTHONPATH); it must exit 0, print what its entry says and leave the files it names.
    The user's own files such commands name (``my.yaml``, ``my_task``, ``held_out.jsonl``)
    are made real there, USER_FILES says as what; a run directory or output they name
    (``runs/my-run``, ``eval/``) is what the commands before made. A block that works on
    an earlier block's run continues in a copy of that block's directory (``after``).
    These are slow tests (about a minute together: a tiny student trains).
  - run elsewhere (``elsewhere``): the named test runs it end to end, in the form that
    entry shows (text the test's source must still hold) and differing from the docs as
    its ``differs`` says (a free port for 8000, a SmolLM2 run for a gsm8k one, ...).
  - run nowhere: the block's ``why`` says why (minutes of training, a benchmark, packages
    to install, a GPU, data or a key); a block with no such command has no ``why``.
  Every command not run here is still checked for what can rot: an ``apprentice`` command
  goes through the real argparse parser (an unknown flag or a renamed subcommand fails),
  its recipe loads with its ``--set`` and launcher overrides (the loader refuses an
  unknown key), and a ``distill`` / ``bootstrap`` whose data is on this machine runs for
  real with ``--dry-run``; a ``scripts/*.py`` command is parsed by that script's own
  argparse, a ``wandb`` command by wandb's own CLI (the subcommand and its
  options exist); a ``scripts/`` shell script exists and passes ``bash -n``; a pinned ``pip
  install`` pin is the one scripts/setup installs; ``python -c`` code compiles. There a
  placeholder path (``my.yaml``) is checked as the real file its ``stand_ins`` entry
  names, or not at all where the entry says None (a user's own file, or an output).
- A block in neither table fails: classify a new block there (README's testing note).
- A YAML block is a recipe fragment: merged into recipes/demo/causal.yaml, it must load.
- docs/notes/ is not read: dated research notes, not instructions for a user.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from doc_blocks import (
    PYTHON,
    ROOT,
    SHELL,
    Elsewhere,
    RunHere,
    blocks_of,
    check_elsewhere,
    commands_of,
    keyed,
    run_as_written,
)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = keyed([b for path in DOCS for b in blocks_of(path)])
LANGUAGES = PYTHON | SHELL | {"text", "yaml"}


# -- Python ----------------------------------------------------------------------------------
@dataclass
class Ran:
    """What a Python block left: its namespace, the requests the stand-in endpoint saw, its
    working directory and the stand-in student's folder."""

    ns: dict
    seen: list
    cwd: Path
    student: str | None


def _quick_start(ran: Ran) -> None:
    assert ran.ns["pred"].answer == "Paris" and ran.ns["pred"].reasoning == "The passage says so."
    [seen] = ran.seen
    assert seen.body["model"] == "gpt-4o-mini"
    assert seen.headers["authorization"] == "Bearer sk-stand-in"  # from $OPENAI_API_KEY
    prompt = seen.body["messages"][-1]["content"]
    assert "Paris is the capital of France." in prompt and "capital of France?" in prompt


def _finetune(ran: Ran) -> None:
    compiled, loaded = ran.ns["student"], ran.ns["TicketTriage"]().load("triage.json")
    for program in (compiled, loaded):  # the compiled program and the one loaded again
        assert type(program.classify.lm).__name__ == "LocalLM"
        assert program.classify.lm.adapter == "multitask"
    assert (ran.cwd / "runs/triage/adapters/multitask/adapter/manifest.json").is_file()
    assert ran.student in (ran.cwd / "triage.json").read_text()


def _together(ran: Ran) -> None:
    together = ran.ns["together"]
    assert [s.step for s in together.step_scores] == ["start", "p", "w", "p"]
    assert ran.ns["best"] in together.programs
    # The prompt steps asked the stand-in endpoint for new instructions.
    assert any("`new_instruction`" in s.body["messages"][0]["content"] for s in ran.seen)
    assert type(together.programs[2].extract.lm).__name__ == "LocalLM"  # the trained student


def _lm_per_predictor(ran: Ran) -> None:
    # Only the last call's extract step reached the served student; classify stayed local.
    [seen] = ran.seen
    assert seen.body["model"] == "multitask" and "`order_id`" in seen.body["messages"][0]["content"]
    assert ran.ns["program"].extract.lm is ran.ns["student_lm"]
    assert ran.ns["program"].classify.lm is ran.ns["teacher_lm"]


def _tracing(ran: Ran) -> None:
    # One traced run (the second ran with tracing off): the program, its modules, its two
    # predictors and their two LM calls, each a span of the one trace.
    spans = ran.ns["memory"].get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    lm_calls = [s for s in spans if "A12345" in str(dict(s.attributes))]
    assert lm_calls, [s.name for s in spans]
    assert not any("A54321" in str(dict(s.attributes)) for s in spans)


@dataclass(frozen=True)
class PyBlock:
    check: Callable[[Ran], None]  # what the block must have done
    stand_ins: tuple[tuple[str, str, str], ...] = ()  # (text in the block, its stand-in, why)
    slow: bool = False  # trains a student


STUDENT = "a 1-layer causal student built from config on the ticket task's text (no model offline)"
ENDPOINT = ('base_url="https://api.openai.com/v1"', 'base_url="{url}"', "a hosted endpoint")
SECONDS = ("make_examples(300)", "make_examples(16)", "16 tickets train in seconds")
PYTHON_BLOCKS = {
    ("README.md", "import apprentice as ap"): PyBlock(_quick_start, (ENDPOINT,)),
    ("README.md", "import apprentice as ap #2"): PyBlock(
        _finetune,
        (('student="path/or/hub-name"', 'student="{student}"', STUDENT), SECONDS),
        slow=True,
    ),
    ("README.md", "import apprentice as ap #3"): PyBlock(
        _together,
        (
            ENDPOINT,
            # A random-init student writes to its token limit: 16 tokens, not 256, per call.
            (
                'ap.LocalLM("path/or/hub-name")',
                'ap.LocalLM("{student}", max_new_tokens=16)',
                STUDENT,
            ),
            (
                'student="path/or/hub-name"',
                'student="{student}", serve={{"max_new_tokens": 16}}',
                STUDENT,
            ),
            ("max_metric_calls=300", "max_metric_calls=24", "a budget that runs in seconds"),
            SECONDS,
            ("make_examples(50, seed=7)", "make_examples(6, seed=7)", "a 6-ticket valset"),
        ),
        slow=True,
    ),
    ("README.md", "import apprentice as ap #4"): PyBlock(
        _lm_per_predictor,
        (('base_url="http://127.0.0.1:8000/v1"', 'base_url="{url}"', "a served student"),),
    ),
    ("README.md", "import apprentice as ap #5"): PyBlock(
        _tracing,
        (
            (
                "from opentelemetry.exporter.otlp.proto.http.trace_exporter import "
                "OTLPSpanExporter",
                "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
                "InMemorySpanExporter",
                "an OTLP collector: the spans are kept in memory and read back",
            ),
            (
                'OTLPSpanExporter("http://localhost:4318/v1/traces")',
                "(memory := InMemorySpanExporter())",
                "an OTLP collector",
            ),
        ),
    ),
}


def _teacher_reply(seen):
    """The stand-in endpoint: the demo's rule teacher for tickets, Paris for the README's
    question, a fixed instruction for GEPA's reflection; a 400 for anything else."""
    from recipes.demo.task import ClassifyTicket, ExtractOrder, teacher
    from stub_server import Reply

    system, last = seen.body["messages"][0]["content"], seen.body["messages"][-1]["content"]
    if "`new_instruction`" in system:
        return Reply("[[new_instruction]]\nClassify the ticket; copy its order number as is.")
    if "`answer`" in system:
        return Reply("[[reasoning]]\nThe passage says so.\n\n[[answer]]\nParis")
    ticket = re.search(r"\[\[ticket\]\]\n(.*?)\n\n", last, re.S)
    if ticket and "`order_id`" in system:
        return Reply(f"[[order_id]]\n{teacher(ExtractOrder, {'ticket': ticket[1]})['order_id']}")
    if ticket:
        out = teacher(ClassifyTicket, {"ticket": ticket[1]})
        return Reply(f"[[reasoning]]\n{out['reasoning']}\n\n[[category]]\n{out['category']}")
    return Reply(status=400)


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "lm"))
    from stub_server import StubServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-stand-in")
    server = StubServer()
    server.respond = _teacher_reply
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from recipes.demo.task import TicketTriage, make_examples, teacher

    import apprentice as ap
    from apprentice.train.tiny import make_tiny_student, task_corpus

    corpus = task_corpus(TicketTriage(), make_examples(16), ap.ScriptedLM(teacher))
    out = tmp_path_factory.mktemp("docs") / "student"
    return make_tiny_student("causal", corpus, out, hidden_size=32, num_layers=1, vocab_size=300)


def _source(key, **values) -> str:
    source = BLOCKS[key].text
    for text, stand_in, why in PYTHON_BLOCKS[key].stand_ins:
        assert text in source, f"{key}: the stand-in for {text!r} ({why}) has nothing to replace"
        source = source.replace(text, stand_in.format(**values))
    return source


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(k, marks=[pytest.mark.slow] if b.slow else [], id=BLOCKS[k].where())
        for k, b in PYTHON_BLOCKS.items()
    ],
)
def test_python_block(key, request, tmp_path, monkeypatch):
    import apprentice as ap

    wants = " ".join(stand_in for _, stand_in, _ in PYTHON_BLOCKS[key].stand_ins)
    server = request.getfixturevalue("endpoint") if "{url}" in wants else None
    student = str(request.getfixturevalue("tiny_student")) if "{student}" in wants else None
    url = server.url if server else None
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # the blocks import recipes.demo.task
    ns = {"__name__": "__doc_block__"}  # a fresh namespace: the block runs alone
    try:
        exec(compile(_source(key, url=url, student=student), BLOCKS[key].where(), "exec"), ns)
        PYTHON_BLOCKS[key].check(Ran(ns, server.seen if server else [], tmp_path, student))
    finally:
        ap.release_engines()


# -- shell -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShellBlock:
    why: str  # why its commands that run neither here nor elsewhere run nowhere ("": none)
    run: dict[str, RunHere] = field(default_factory=dict)  # Command.text -> run here, in order
    elsewhere: dict[str, Elsewhere] = field(default_factory=dict)  # Command.text -> its test
    after: tuple[str, str] | None = None  # runs where that block's run left its directory
    stand_ins: dict[str, str | None] = field(default_factory=dict)  # see the module docstring
    dry_runs: int = 0  # commands not run here whose distill/bootstrap runs with --dry-run


# A user's own files, which the commands a block runs here name: made in its working
# directory (_user_files), each standing for what a reader's would be.
MY_RECIPE = ["name=my-run", "train.full_finetune=false", "serve.max_new_tokens=8"]
MY_RECIPE += ["eval.untrained=false", "eval.num_threads=2"]
USER_FILES = {
    "my.yaml": "recipes/demo/causal.yaml shrunk to seconds (tests/tiny_run.py's SHORT, then "
    "MY_RECIPE: LoRA, 8 new tokens, no untrained eval), named my-run: so runs/my-run",
    "my_task.py": "my_task:MyProgram and my_task:metric: the demo's TicketTriage and metric",
    "held_out.jsonl": "4 demo tickets (seed 11), not the training set's",
}

BENCH = "a benchmark: minutes on a quiet box, and its numbers mean nothing on a busy one"
MY = {"my.yaml": "recipes/demo/causal.yaml", "runs/my-run": None}
MINE = MY | {
    "runs/my-run/program.json": None,
    "my_task:MyProgram": None,
    "my_task:metric": None,
    "held_out.jsonl": None,
}
MY_EVAL = "apprentice eval runs/my-run/program.json --program my_task:MyProgram --data "
MY_EVAL += "held_out.jsonl --metric my_task:metric --out eval/"
SERVE_LOCAL = Elsewhere(
    "tests/train/test_real_student.py::test_a_served_real_student_is_a_teacher_over_http",
    ('"apprentice.cli", "serve", str(root / "run"), "--port"',),
    "a SmolLM2 run, a free port for 8000, the local backend as the default (no --backend)",
)
LAUNCH = "tests/train/test_launch.py::"
LAUNCH += "test_apprentice_train_runs_under_accelerate_launch_with_two_processes"
FOUR_PROCESSES = Elsewhere(
    LAUNCH,
    ('main(["train", str(root), "--num-processes", "2"',),
    "2 CPU processes (gloo) for 4 GPUs, on a run of the demo recipe shrunk",
)
SHELL_BLOCKS = {
    ("README.md", "scripts/demo"): ShellBlock(
        "scripts/demo sets up .venv (installs packages) and distils the demo recipe (4-13 "
        "min); scripts/test sets up .venv and runs this whole suite: CI runs it (.ci/run), "
        "no test does"
    ),
    ("README.md", ".venv/bin/apprentice distill recipes/demo/smollm2.yaml"): ShellBlock(
        "trains SmolLM2 for 9-28 min on 2 CPU cores; no test distils this recipe", dry_runs=1
    ),
    ("README.md", "apprentice distill recipes/gsm8k/llama.yaml"): ShellBlock(
        "the gsm8k distill needs a GPU, the GSM8K data and a teacher key",
        run={
            "apprentice distill my.yaml --set train.epochs=1 --set teacher.model=gpt-4o": (
                RunHere("report: runs/my-run/report/report.md", ("runs/my-run/program.json",))
            ),
            "apprentice distill my.yaml --dry-run": RunHere("teacher estimate (dry run"),
            "apprentice bootstrap my.yaml": RunHere("run directory: runs/my-run"),
            "apprentice report runs/my-run": RunHere("report  ran", ("runs/my-run/report",)),
            "apprentice export runs/my-run --merged my-student/": RunHere(
                "my-student", ("my-student/config.json", "my-student/model.safetensors")
            ),
            MY_EVAL: RunHere("| program.json |", ("eval/eval.json", "eval/report.md")),
        },
        elsewhere={
            "apprentice train my.yaml --num-processes 4": FOUR_PROCESSES,
            "apprentice serve runs/my-run --backend local --port 8000": SERVE_LOCAL,
        },
        stand_ins=MY,
    ),
    (
        "README.md",
        "apprentice distill my.yaml --trace otlp --trace-endpoint http://localhost:4318",
    ): ShellBlock(
        "",
        run={
            # The eval runs again (the block above bootstrapped without the distill's --set
            # teacher.model), so it writes spans: a reused stage would write none.
            "apprentice eval runs/my-run --trace jsonl --trace-path eval-spans.jsonl": RunHere(
                "run directory: runs/my-run", ("eval-spans.jsonl",)
            ),
        },
        elsewhere={
            "apprentice distill my.yaml --trace otlp --trace-endpoint http://localhost:4318": (
                Elsewhere(
                    "tests/test_tracing_commands.py::"
                    "test_the_otlp_exporter_posts_the_spans_to_a_collector",
                    ('"--trace", "otlp", "--trace-endpoint", url',),
                    "bootstrap (the stage that runs the program) rather than distill, of the "
                    "demo recipe shrunk; a loopback collector on a free port for localhost:4318",
                )
            ),
            f"{MY_EVAL} --trace jsonl": Elsewhere(
                "tests/test_tracing_commands.py::"
                "test_a_recipe_tracing_section_writes_a_span_for_every_run_module_and_lm_call",
                ('"eval", str(root / "program.json"), "--program"', '"--trace", "jsonl", "--out"'),
                "in process, the demo's class and metric for my_task's (this block's previous "
                "command runs here, and the one above without --trace)",
            ),
        },
        after=("README.md", "apprentice distill recipes/gsm8k/llama.yaml"),
        stand_ins=MINE,
        dry_runs=1,  # the `my.yaml` distill as recipes/demo/causal.yaml: --dry-run sends nothing
    ),
    ("README.md", "scripts/setup"): ShellBlock(
        "installs packages (vLLM's CUDA build among them), downloads GSM8K from the Hub, and "
        "the distill needs a GPU and a teacher key"
    ),
    ("README.md", "apprentice serve runs/demo-causal --backend local --port 8000"): ShellBlock(
        "",
        elsewhere={
            "apprentice serve runs/demo-causal --backend local --port 8000": SERVE_LOCAL,
            "apprentice serve runs/gsm8k-llama --backend vllm": Elsewhere(
                "tests/serve/test_vllm_real_server.py::"
                "test_apprentice_serve_backend_vllm_serves_until_sigterm",
                ('"apprentice.cli", "serve", str(root / "run")', '"--backend", "vllm"'),
                "a SmolLM2 run on vLLM's CPU build (a vllm test), a free port",
            ),
        },
    ),
    ("docs/training.md", "apprentice train recipes/demo/causal.yaml"): ShellBlock(
        "trains the demo's 4-layer student for 70 epochs: minutes (tests train it shrunk)"
    ),
    (
        "docs/training.md",
        "WANDB_MODE=offline apprentice distill recipes/demo/causal.yaml --set train.report_to=wandb",
    ): ShellBlock(
        "distills the demo for minutes; wandb sync uploads, with a login",
        stand_ins={"runs/demo-causal/adapters/multitask/tracking/wandb/offline-run-*": None},
        dry_runs=1,
    ),
    ("docs/training.md", "apprentice train RECIPE --num-processes 4"): ShellBlock(
        "--accelerate-config needs a user's accelerate config for their GPUs; no test "
        "launches from a config file",
        elsewhere={
            "apprentice train RECIPE --num-processes 4": FOUR_PROCESSES,
            "apprentice train RECIPE --launcher none": Elsewhere(
                LAUNCH,
                ('"train", str(root), "--launcher", "none"',),
                "a run directory of the demo recipe shrunk for RECIPE",
            ),
        },
        stand_ins={"RECIPE": "recipes/demo/causal.yaml", "accel.yaml": None},
        dry_runs=1,  # the distill, its launcher options included
    ),
    (
        "docs/benchmarks.md",
        ".venv/bin/apprentice distill recipes/demo/smollm2.yaml --run-dir /tmp/demo-smollm2",
    ): ShellBlock(BENCH, dry_runs=1),
    (
        "docs/benchmarks.md",
        ".venv/bin/apprentice distill recipes/rotten_tomatoes/smollm2.yaml --run-dir /tmp/rt-smollm2",
    ): ShellBlock(BENCH, dry_runs=1),
    (
        "docs/benchmarks.md",
        ".venv/bin/apprentice distill recipes/demo/smollm2.yaml --run-dir /tmp/demo-chat",
    ): ShellBlock(BENCH, dry_runs=2),
    (
        "docs/benchmarks.md",
        ".venv/bin/apprentice eval recipes/demo/smollm2.yaml --run-dir /tmp/demo-chat",
    ): ShellBlock(BENCH + "; scores the two runs of the block above"),
    ("docs/benchmarks.md", "export VLLM_CPU_OMP_THREADS_BIND=0-1"): ShellBlock(
        BENCH + "; needs vLLM", dry_runs=1
    ),
    ("docs/benchmarks.md", "git worktree add --detach /tmp/track-base b6e8a98"): ShellBlock(
        BENCH + "; its `git worktree add` writes a worktree into the repository's .git"
    ),
}
for _key in (
    ".venv/bin/python scripts/bench_overhead.py --rounds 5 --json overhead.json",
    ".venv/bin/python scripts/bench_overhead.py",
    ".venv/bin/python scripts/bench_overhead.py --rounds 5 --json overhead.json #2",
    ".venv/bin/python scripts/bench_local.py",
    ".venv/bin/python scripts/bench_local.py --rounds 3 --torch-threads 2",
    ".venv/bin/python scripts/bench_bootstrap.py --calls 2000 --rounds 3",
    ".venv/bin/python scripts/bench_train.py",
    ".venv/bin/python scripts/bench_train.py --student smollm2 --examples 40 --steps 6",
    ".venv/bin/python scripts/bench_local.py --student smollm2 --threads 64 --runs-per-thread 1",
    ".venv/bin/python scripts/bench_slow_clients.py --tricklers 1000 --seconds 30",
    "VLLM_CPU_OMP_THREADS_BIND=0-1 .venv/bin/python scripts/bench_local.py --student smollm2",
):
    SHELL_BLOCKS[("docs/benchmarks.md", _key)] = ShellBlock(BENCH)

APPRENTICE = {"apprentice", ".venv/bin/apprentice"}
PYTHONS = {"python", ".venv/bin/python"}
STAGES = {"distill", "bootstrap", "dataset", "train", "bind", "eval", "report"}


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def _parse_like_the_script(script: Path, args: list[str], monkeypatch) -> argparse.Namespace:
    """The script's own argparse parses ``args``; the script stops there (nothing runs)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(real(self, argv, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.setattr(sys, "argv", [str(script), *args])
        m.syspath_prepend(str(script.parent))
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                runpy.run_path(str(script), run_name="__main__")
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as exc:
            raise AssertionError(f"{script.name} {' '.join(args)}: {err.getvalue()}") from exc
    raise AssertionError(f"{script.name} never parsed its arguments")


def _stand_in(word: str, block: ShellBlock) -> str | None:
    """The path a placeholder stands for (None: not checked); a real path as it is."""
    return block.stand_ins.get(word, word)


def _recipe_names() -> set[str]:
    return {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "recipes").rglob("*.yaml")}


def _check_run_dir(path: str) -> None:
    """runs/<name>[/...]: the run directory of the recipe called <name>."""
    parts = Path(path).parts
    assert parts[0] == "runs" and parts[1] in _recipe_names(), f"{path}: no recipe makes it"


def _parse_like_wandb(argv: list[str]) -> None:
    """``wandb SUBCOMMAND [ARGS]`` parsed by wandb's own CLI (click), which runs nothing."""
    pytest.importorskip("wandb")  # the tracking extra
    import click
    from wandb.cli.cli import cli

    name, command, args, ctx = "wandb", cli, list(argv), None
    while isinstance(command, click.Group):  # `wandb leet inspect`: a group in a group
        ctx = command.make_context(name, list(args), parent=ctx)
        name, command, args = command.resolve_command(ctx, args)
    command.make_context(name, args, parent=ctx)


def _check_apprentice(argv: list[str], block: ShellBlock, capsys) -> int:
    """Parses with the real CLI parser, loads the recipe with its overrides; returns 1 when
    it ran the command for real with --dry-run."""
    from apprentice.cli import _launcher_overrides, build_parser, main
    from apprentice.recipe import import_object, load_recipe

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"apprentice {' '.join(argv)}: {capsys.readouterr().err}") from None
    target = _stand_in(str(getattr(args, "target", "")), block)
    if target is None:  # a user's own file: not checked
        pass
    elif args.command in STAGES and target.endswith(".yaml"):
        recipe = load_recipe(ROOT / target, args.overrides + _launcher_overrides(args))
        if args.command in ("distill", "bootstrap"):
            try:
                recipe.check_data_files()
            except Exception:
                return 0  # its data is not on this machine (gsm8k): parsed and loaded only
            at = argv.index(str(args.target))
            dry = [*argv[:at], str(ROOT / target), *argv[at + 1 :]]
            code = main([*dry, "--dry-run"] if "--dry-run" not in dry else dry)
            out = capsys.readouterr()
            assert code == 0 and "teacher estimate" in out.out, out.err
            return 1
    elif args.command in STAGES | {"serve", "export"}:
        _check_run_dir(target)
    for option in ("program", "metric"):
        if getattr(args, option, None) and _stand_in(getattr(args, option), block):
            import_object(getattr(args, option), option)
    return 0


def _check_command(command, block: ShellBlock, monkeypatch, capsys) -> int:
    program, *args = command.argv
    if program == "nice":  # nice -n N COMMAND: COMMAND is checked
        assert args[0] == "-n" and args[1].lstrip("-").isdigit(), command.line
        program, *args = args[2:]
    if program in APPRENTICE:
        return _check_apprentice(args, block, capsys)
    if program in PYTHONS and args[:1] == ["-c"]:
        compile(args[1], command.line, "exec")
    elif program in PYTHONS:
        _parse_like_the_script(ROOT / args[0], args[1:], monkeypatch)
    elif program == ".venv/bin/pip":
        assert args[0] == "install"
        setup = (ROOT / "scripts" / "setup").read_text()
        for pin in (a for a in args[1:] if "==" in a):
            assert pin in setup, f"{pin} is not the pin scripts/setup names"
    elif program == "wandb":  # wandb's own click parser: the subcommand and its options exist
        _parse_like_wandb([a for a in args if _stand_in(a, block) is not None])
    elif program == "git":  # the tree of an older commit, for a before/after benchmark
        assert args[:3] == ["worktree", "add", "--detach"], command.line
        subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{args[4]}^{{commit}}"], check=True
        )
    elif program.startswith("scripts/"):
        script = ROOT / program
        assert script.is_file() and script.stat().st_mode & 0o111, f"{program}: not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
    else:
        raise AssertionError(f"no check for {program!r}: teach _check_command about it")
    return 0


SHELL_KEYS = [k for k, b in BLOCKS.items() if b.lang in SHELL]


def _user_files(cwd: Path) -> None:
    """USER_FILES, made in ``cwd``."""
    from recipes.demo.task import make_examples

    from apprentice.recipe import apply_overrides
    from tiny_run import RECIPE, SHORT

    recipe = apply_overrides(yaml.safe_load(RECIPE.read_text()), [*SHORT, *MY_RECIPE])
    (cwd / "my.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (cwd / "my_task.py").write_text(
        "from recipes.demo.task import TicketTriage as MyProgram, metric  # noqa: F401\n"
    )
    tickets = make_examples(4, seed=11)
    (cwd / "held_out.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in tickets))
    assert {p.name for p in cwd.iterdir()} == set(USER_FILES)


@pytest.fixture(scope="module")
def ran_here(tmp_path_factory):
    """The working directory where a block's commands ran as written (once a module), by key:
    a new one holding USER_FILES, or a copy of the one its ``after`` block left."""
    done: dict[tuple[str, str], Path] = {}

    def run(key: tuple[str, str]) -> Path:
        if key not in done:
            block = SHELL_BLOCKS[key]
            cwd = tmp_path_factory.mktemp("shell")
            if block.after:
                shutil.copytree(run(block.after), cwd, dirs_exist_ok=True)
            else:
                _user_files(cwd)
            run_as_written(commands_of(BLOCKS[key].text), block.run, cwd)
            done[key] = cwd
        return done[key]

    return run


def _runs_here(key) -> bool:
    return bool(key in SHELL_BLOCKS and SHELL_BLOCKS[key].run)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(k, marks=[pytest.mark.slow] if _runs_here(k) else [], id=BLOCKS[k].where())
        for k in SHELL_KEYS
    ],
)
def test_shell_block(key, request, monkeypatch, capsys):
    assert key in SHELL_BLOCKS, f"{BLOCKS[key].where()} {key}: classify it in SHELL_BLOCKS"
    block = SHELL_BLOCKS[key]
    text = BLOCKS[key].text
    for placeholder in block.stand_ins:
        assert placeholder in text, f"{key}: stand-in for {placeholder!r}, not in the block"
    commands = commands_of(text)
    named = {**block.run, **block.elsewhere}
    unknown = set(named) - {c.text for c in commands}
    assert not unknown, f"{key}: {sorted(unknown)} are not commands of the block"
    assert not set(block.run) & set(block.elsewhere), f"{key}: run here and elsewhere?"
    nowhere = [c.line for c in commands if c.text not in named]
    assert bool(block.why) == bool(nowhere), f"{key}: `why` must say why {nowhere} run nowhere"
    for where in block.elsewhere.values():
        check_elsewhere(where)
    monkeypatch.syspath_prepend(str(ROOT))  # recipes name recipes.demo.task & co
    checked = [c for c in commands if c.text not in block.run]
    ran = sum(_check_command(c, block, monkeypatch, capsys) for c in checked)
    assert ran == block.dry_runs, f"{key}: {ran} dry runs, the table says {block.dry_runs}"
    if block.run:
        request.getfixturevalue("ran_here")(key)


# -- every block is known -----------------------------------------------------------------------
def test_every_fence_names_a_language_this_test_knows():
    unknown = [
        f"{b.where()} ({b.lang or 'none'})" for b in BLOCKS.values() if b.lang not in LANGUAGES
    ]
    assert not unknown, f"name a language ({sorted(LANGUAGES)}) for: {unknown}"


def test_every_python_block_is_classified_and_every_entry_is_a_block():
    python = {k for k, b in BLOCKS.items() if b.lang in PYTHON}
    assert python == set(PYTHON_BLOCKS), (
        f"unclassified: {sorted(python - set(PYTHON_BLOCKS))}; "
        f"gone from the docs: {sorted(set(PYTHON_BLOCKS) - python)}"
    )


def test_every_shell_entry_is_still_a_block():
    assert not set(SHELL_BLOCKS) - set(SHELL_KEYS), sorted(set(SHELL_BLOCKS) - set(SHELL_KEYS))


@pytest.mark.parametrize(
    "key",
    [k for k, b in BLOCKS.items() if b.lang == "yaml"],
    ids=lambda k: f"{k[0]}:{BLOCKS[k].line}",
)
def test_a_yaml_block_is_a_recipe_fragment_that_loads(key):
    from apprentice.recipe import validate_recipe

    def merged(base: dict, fragment: dict) -> dict:
        out = dict(base)
        for name, value in fragment.items():
            both = isinstance(value, dict) and isinstance(base.get(name), dict)
            out[name] = merged(base[name], value) if both else value
        return out

    demo = yaml.safe_load((ROOT / "recipes/demo/causal.yaml").read_text())
    fragment = yaml.safe_load(BLOCKS[key].text)
    recipe = validate_recipe(merged(demo, fragment), source=BLOCKS[key].where())
    for section, values in fragment.items():  # what the fragment sets is what loaded
        assert getattr(recipe, section).model_dump(exclude_unset=True).keys() >= values.keys()
