"""The fenced code blocks of the docs, and the commands of a shell block, for
tests/test_docs_blocks.py.

A block is known by its file and its first line (comment and spacing dropped); a second
block of a file with the same first line gets " #2" after it, and so on.
"""

from __future__ import annotations

import re
import shlex
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
