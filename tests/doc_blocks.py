"""The fenced code blocks of the docs, the commands of a shell block, and running those
commands as written or finding the test that runs them, for tests/test_docs_blocks.py.

A block is known by its file and its first line (comment and spacing dropped); a second
block of a file with the same first line gets " #2" after it, and so on.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    line: int  # the opening fence's line, from 1
    lang: str  # the fence's language ("" when it names none)
    text: str

    @property
    def first_line(self) -> str:
        return first_command(self.text)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def first_command(text: str) -> str:
    """The block's first non-blank line, without a trailing comment, spaces collapsed."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if words:
            return " ".join(w for w in words if w != "\\")
    return ""


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, dedented (a block may sit inside a list)."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[end]
        ):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{i + 1}: a fence that never closes")
        text = textwrap.dedent("\n".join(lines[i + 1 : end]))
        lang = opening["info"].strip().split(" ")[0].lower()
        found.append(Block(path.relative_to(ROOT).as_posix(), i + 1, lang, text + "\n"))
        i = end + 1
    return found


def keyed(blocks: list[Block]) -> dict[tuple[str, str], Block]:
    """The blocks by (file, first line), a repeated first line numbered " #2", " #3"."""
    out: dict[tuple[str, str], Block] = {}
    for block in blocks:
        key, n = (block.file, block.first_line), 1
        while key in out:
            n += 1
            key = (block.file, f"{block.first_line} #{n}")
        out[key] = block
    return out


# -- shell ---------------------------------------------------------------------------------
@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # NAME=value words before the program
    line: str = ""  # as written, continuations joined

    @property
    def text(self) -> str:
        """Its words as the shell splits them, without a comment: its key in a table."""
        return " ".join([*(f"{k}={v}" for k, v in self.env.items()), *self.argv])


_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_UNSUPPORTED = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}


def commands_of(text: str) -> list[Command]:
    """The simple commands of a shell block: continuations joined, comments dropped,
    ``export NAME=value`` and ``NAME=value`` lines recorded and ``$NAME`` expanded as bash
    would split it. Pipes, redirections, ``&&`` and substitutions are refused: a block
    that needs them needs a checker that understands them."""
    variables: dict[str, str] = {}
    commands = []
    for raw in text.replace("\\\n", " ").splitlines():
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        bad = _UNSUPPORTED.intersection(words) or {w for w in words if "$(" in w or "`" in w}
        if bad:
            raise AssertionError(f"unsupported shell syntax {sorted(bad)} in: {raw.strip()}")
        if words[0] == "export":
            words = words[1:]
        env = {}
        while words and _ASSIGN.match(words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if not words:  # assignments alone: they set shell variables
            variables.update(env)
            continue
        argv = []
        for word in words:
            if word.startswith("$"):
                name = word[1:].strip("{}")
                if name not in variables:
                    raise AssertionError(f"${name} is not set earlier in the block: {raw}")
                argv.extend(variables[name].split())
            else:
                argv.append(word)
        commands.append(Command(argv, env, " ".join(raw.split())))
    return commands


# -- running a shell block's commands ----------------------------------------------------------
@dataclass(frozen=True)
class RunHere:
    """A command run as written: what it must print, and leave where it ran."""

    prints: str
    makes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Elsewhere:
    """A command not run here that the named test runs end to end: ``shows`` is how that test
    writes it (text its source must hold), ``differs`` what it changes from the docs."""

    test: str  # tests/path.py::test_name
    shows: tuple[str, ...]
    differs: str


def check_elsewhere(where: Elsewhere) -> None:
    """The named test exists and its source writes the command as ``shows`` says."""
    path, name = where.test.split("::")
    source = (ROOT / path).read_text()
    found = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == name
    ]
    assert found, f"{where.test}: no such test (it is named as running a docs command)"
    body = ast.get_source_segment(source, found[0])
    missing = [text for text in where.shows if text not in body]
    assert not missing, f"{where.test} no longer holds {missing}: does it still run the command?"


def run_as_written(commands: list[Command], expected: dict[str, RunHere], cwd: Path) -> None:
    """Runs each command that ``expected`` names, in order, in ``cwd``, as a shell would: the
    programs on PATH are this Python's environment's (its ``apprentice`` console script), and
    the repository is on PYTHONPATH (src/, and the root for recipes/)."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "apprentice").is_file(), (
        f"no apprentice script in {bin_dir}: pip install -e ."
    )
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    for command in commands:
        if command.text not in expected:
            continue
        want = expected[command.text]
        done = subprocess.run(
            command.argv,
            cwd=cwd,
            env={**env, **command.env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        said = f"{command.line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == 0, said
        assert want.prints in done.stdout, f"{want.prints!r} not printed by {said}"
        missing = [path for path in want.makes if not (cwd / path).exists()]
        assert not missing, f"{command.line} left no {missing}"
