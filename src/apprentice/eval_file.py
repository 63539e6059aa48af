"""``apprentice eval PROGRAM.json --program MOD:CLASS --data FILE --metric MOD:FN``: any saved
program scored on any data file (JSONL, JSON, CSV or a HF ``datasets`` folder), with the
report's table.

A program file never chooses the code that runs: the class to load it into is named on the
command line (the file's own record of its class is only quoted in the error when it is
missing), and the file's LM bindings are checked as ``Module.load`` checks them.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from apprentice.evaluate.report import SystemEval, evaluate_system, write_report
from apprentice.metric import check_metric
from apprentice.module import Module
from apprentice.recipe import RecipeError, import_object, load_examples
from apprentice.recipe_sections import DataSource

__all__ = ["evaluate_program_file", "program_inputs"]


def program_inputs(program: Module) -> list[str]:
    """The names ``program.forward`` takes: the fields of an example that are inputs."""
    params = inspect.signature(program.forward).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not names:
        raise RecipeError(
            f"{type(program).__name__}.forward takes no named inputs; give --inputs a,b"
        )
    return names


def evaluate_program_file(
    program_file: str | os.PathLike,
    *,
    program: str | None,
    data: str | os.PathLike,
    metric: str,
    inputs: list[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    num_threads: int = 8,
    out_dir: str | os.PathLike | None = None,
    trusted: bool = False,
    progress: bool = True,
) -> SystemEval:
    """Loads ``program_file`` into ``program`` (``pkg.mod:Class``), scores it with ``metric``
    (``pkg.mod:fn``) on ``data``, and with ``out_dir`` writes the SystemEval JSON and a
    report there."""
    path = Path(program_file)
    if program is None:
        try:
            named = json.loads(path.read_text()).get("program")
        except (OSError, ValueError, AttributeError):
            named = None
        hint = (
            f" (the file says it was saved from {named!r:.120})" if isinstance(named, str) else ""
        )
        raise RecipeError(
            f"give the program's class with --program pkg.module:Class{hint}: a program file "
            "never chooses the code that runs"
        )
    cls = import_object(program, "program")
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise RecipeError(f"program: {program!r} is not an apprentice Module class")
    loaded = cls().load(path, trusted=trusted)
    score = import_object(metric, "metric")
    check_metric(score)
    names = inputs or program_inputs(loaded)
    examples = load_examples(DataSource(path=str(data), split=split, limit=limit), names)
    result = evaluate_system(
        path.name,
        loaded,
        examples,
        score,
        num_threads=num_threads,
        display_progress=progress,
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({"eval": result.to_dict()}, indent=2))
        if result.result is not None:  # every example: its prediction, score and error
            result.result.to_json(out / "results.json")
        write_report(
            out,
            [result],
            title=f"apprentice eval: {path.name} on {Path(data).name}",
            baseline=result.name,
            candidate=result.name,
        )
    return result
