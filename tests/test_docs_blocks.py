"""Every Python and shell block of README.md and docs/*.md runs or is checked (issue 23,
item 1), so an example in the docs cannot rot unnoticed.

- Every fence names its language (``text`` for output, layouts and diagrams).
- A Python block runs alone: a fresh namespace, a fresh working directory (a reader can
  paste any one block). Where it names a hosted endpoint or a model that is not on this
  machine, PYTHON_BLOCKS lists each text substitution made and why; every substituted
  text must still be in the block. The stand-in endpoint is a loopback OpenAI-compatible
  server (tests/lm/stub_server.py) answering as the demo's rule teacher does.
- A shell block is listed in SHELL_BLOCKS with why it is not run as written (all of them
  today run for minutes, install packages or need a GPU, data or a key). Each of its
  commands is still checked for what can rot: an ``apprentice`` command goes through the
  real argparse parser (an unknown flag or a renamed subcommand fails), its recipe loads
  with its ``--set`` and launcher overrides (the loader refuses an unknown key), and a
  ``distill`` / ``bootstrap`` whose data is on this machine runs for real with
  ``--dry-run``; a ``scripts/*.py`` command is parsed by that script's own argparse, a
  ``wandb`` command by wandb's own CLI (the subcommand and its options exist); a
  ``scripts/`` shell script exists and passes ``bash -n``; a pinned ``pip install`` pin is
  the one scripts/setup installs; ``python -c`` code compiles. A placeholder path
  (``my.yaml``) is checked as the real file its ``stand_ins`` entry names, or not at all
  where the entry says None (a user's own file, or an output).
- A block in neither table fails: classify a new block there (docs/README's testing note).
- A YAML block is a recipe fragment: merged into recipes/demo/causal.yaml, it must load.
- docs/notes/ is not read: dated research notes, not instructions for a user.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from doc_blocks import PYTHON, ROOT, SHELL, blocks_of, commands_of, keyed

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
    why: str  # why the block is checked rather than run as written
    stand_ins: dict[str, str | None] = field(default_factory=dict)  # see the module docstring
    dry_runs: int = 0  # its distill/bootstrap commands that run for real with --dry-run


MINUTES = "runs for minutes (a teacher run and training)"
BENCH = "a benchmark: minutes on a quiet box, and its numbers mean nothing on a busy one"
MY = {"my.yaml": "recipes/demo/causal.yaml", "runs/my-run": None}
SHELL_BLOCKS = {
    ("README.md", "scripts/demo"): ShellBlock("creates .venv, installs, distils for minutes"),
    ("README.md", ".venv/bin/apprentice distill recipes/demo/smollm2.yaml"): ShellBlock(
        MINUTES, dry_runs=1
    ),
    ("README.md", "apprentice distill recipes/gsm8k/llama.yaml"): ShellBlock(
        MINUTES + "; gsm8k needs a GPU, its data and a key (a user's own files: not checked)",
        stand_ins=MY
        | {
            "runs/my-run/program.json": None,
            "my_task:MyProgram": None,
            "my_task:metric": None,
            "held_out.jsonl": None,
        },
        dry_runs=3,  # the two `my.yaml` distills and the bootstrap, as recipes/demo/causal.yaml
    ),
    (
        "README.md",
        "apprentice distill my.yaml --trace otlp --trace-endpoint http://localhost:4318",
    ): ShellBlock(
        MINUTES + ", sending spans to a collector that is not here (a user's own files: not "
        "checked)",
        stand_ins=MY
        | {
            "runs/my-run/program.json": None,
            "my_task:MyProgram": None,
            "my_task:metric": None,
            "held_out.jsonl": None,
        },
        dry_runs=1,  # the `my.yaml` distill as recipes/demo/causal.yaml: --dry-run sends nothing
    ),
    ("README.md", "scripts/setup"): ShellBlock(
        "installs packages, downloads GSM8K and needs a GPU and a teacher key"
    ),
    ("README.md", "apprentice serve runs/demo-causal --backend local --port 8000"): ShellBlock(
        "a server that runs until stopped, on a trained run"
    ),
    ("docs/training.md", "apprentice train recipes/demo/causal.yaml"): ShellBlock(MINUTES),
    (
        "docs/training.md",
        "WANDB_MODE=offline apprentice distill recipes/demo/causal.yaml --set train.report_to=wandb",
    ): ShellBlock(
        MINUTES + "; wandb sync uploads, with a login",
        stand_ins={"runs/demo-causal/adapters/multitask/tracking/wandb/offline-run-*": None},
        dry_runs=1,
    ),
    ("docs/training.md", "apprentice train RECIPE --num-processes 4"): ShellBlock(
        MINUTES + " on several GPUs",
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
    "git worktree add --detach /tmp/track-base b6e8a98",
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


@pytest.mark.parametrize("key", SHELL_KEYS, ids=lambda k: f"{k[0]}:{BLOCKS[k].line}")
def test_shell_block(key, monkeypatch, capsys):
    assert key in SHELL_BLOCKS, f"{BLOCKS[key].where()} {key}: classify it in SHELL_BLOCKS"
    block = SHELL_BLOCKS[key]
    text = BLOCKS[key].text
    for placeholder in block.stand_ins:
        assert placeholder in text, f"{key}: stand-in for {placeholder!r}, not in the block"
    monkeypatch.syspath_prepend(str(ROOT))  # recipes name recipes.demo.task & co
    ran = sum(_check_command(c, block, monkeypatch, capsys) for c in commands_of(text))
    assert ran == block.dry_runs, f"{key}: {ran} dry runs, the table says {block.dry_runs}"


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
