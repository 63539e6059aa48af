"""ProgramOfThought with scripted teachers: the code runs in the sandbox, an error goes back
to the model for a fix, max_iters bounds the tries, and every call becomes a training row."""

from __future__ import annotations

import pytest
from recipes.pot_arithmetic.program import ArithmeticPoT, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset.build import build_dataset, load_dataset_dir
from apprentice.predict.program_of_thought import ProgramOfThoughtError, extract_code
from apprentice.sandbox import Sandbox, SandboxLimits, SandboxUnavailableError
from apprentice.sandbox import sandbox as sandbox_module
from apprentice.traces import bootstrap_traces, capture


def scripted(first: str, fix: str = "print(6 * 7)"):
    """A teacher whose first program is ``first`` and whose fixes are ``fix``."""
    seen: list[dict] = []

    def fn(signature, inputs):
        seen.append(dict(inputs))
        if "code" in signature.output_fields:
            return {"code": fix if "error" in inputs else first}
        return {"answer": int(inputs["code_output"])}

    return fn, seen


def pot(fn, max_iters=3, **limits) -> ap.ProgramOfThought:
    program = ap.ProgramOfThought(
        "question -> answer: int", max_iters=max_iters, sandbox=Sandbox(SandboxLimits(**limits))
    )
    program.set_lm(ap.ScriptedLM(fn))
    return program


def test_the_code_runs_and_the_answer_is_read_from_its_output():
    fn, seen = scripted("```python\nx = 6\nprint(x * 7)\n```")
    program = pot(fn)
    with capture(program) as steps:
        result = program(question="What is six times seven?")
    assert result.answer == 42 and result.code == "x = 6\nprint(x * 7)"
    assert result.code_output == "42"
    assert [s.predictor for s in steps] == ["generate", "answer"]
    assert steps[1].inputs["code_output"] == "42" and steps[1].inputs["code"] == result.code
    assert "Write a Python program" in steps[0].messages[0]["content"]


def test_an_error_goes_back_to_the_model_and_its_fix_is_used():
    fn, seen = scripted("print(6 * 7 / zero)")
    program = pot(fn)
    with capture(program) as steps:
        result = program(question="q")
    assert [s.predictor for s in steps] == ["generate", "regenerate", "answer"]
    fix_request = seen[1]
    assert fix_request["previous_code"] == "print(6 * 7 / zero)"
    assert "NameError: name 'zero' is not defined" in fix_request["error"]
    assert "print(6 * 7 / zero)" in fix_request["error"]  # the failing line is shown
    assert result.answer == 42 and result.code == "print(6 * 7)"
    # The failed program is kept in the trace but marked: it never becomes a demo or a
    # training row; the fix (written from the failed code and its error) does.
    assert [s.rejected for s in steps] == [True, False, False]
    assert "program 1 failed: NameError" in steps[0].rejection


def test_the_error_the_model_sees_is_cut_to_its_last_characters():
    fn, seen = scripted("raise ValueError('x' * 5000 + ' the end')")
    program = pot(fn)
    program.max_error_chars = 100
    assert program(question="q").answer == 42
    assert len(seen[1]["error"]) == 100 and seen[1]["error"].endswith("the end")


def test_a_limit_hit_is_named_in_the_error_the_model_sees():
    fn, seen = scripted("while True:\n    pass")
    result = pot(fn, cpu_s=1, wall_s=60)(question="q")
    assert "sandbox limit hit: cpu_time" in seen[1]["error"]
    assert result.answer == 42


def test_when_every_program_fails_it_stops_after_max_iters_and_says_why():
    fn, seen = scripted("import os\nos.fork()", fix="print(undefined)")
    with pytest.raises(ProgramOfThoughtError) as info:
        pot(fn, max_iters=2)(question="q")
    code_requests = [s for s in seen if "code_output" not in s]
    assert len(code_requests) == 2  # one generate, one regenerate: two programs run
    assert "all 2 program(s) failed" in str(info.value)
    assert info.value.code == "print(undefined)" and "NameError" in info.value.error
    assert "sandbox limit hit: processes" in seen[1]["error"]  # the first try's fork


def test_no_sandbox_means_the_code_is_never_run(monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    fn, _ = scripted(f"open({str(marker)!r}, 'w').write('ran')\nprint(1)")
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox_module, "_RESOLVED", {})
    program = ap.ProgramOfThought("question -> answer: int")
    program.set_lm(ap.ScriptedLM(fn))
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        program(question="q")
    assert not marker.exists()


def test_extract_code_takes_the_fenced_block_or_the_text():
    assert extract_code("Here:\n```python\nprint(1)\n```\nDone") == "print(1)"
    assert extract_code("```\nprint(2)\n```") == "print(2)"
    assert extract_code("```py\nprint(3)") == "print(3)"  # an unclosed fence
    assert extract_code("  print(4)\n") == "print(4)"


def test_bad_arguments_are_refused_with_the_value():
    with pytest.raises(ValueError, match="max_iters must be a positive integer, got 0"):
        ap.ProgramOfThought("question -> answer", max_iters=0)
    with pytest.raises(ValueError, match=r"\['code'\]"):
        ap.ProgramOfThought("question, code -> answer")


def test_the_program_saves_and_loads(tmp_path):
    program = ArithmeticPoT()
    program.solve.generate.demos = [ap.Example(question="q", code="print(1)")]
    path = program.save(tmp_path / "program.json")
    loaded = ArithmeticPoT().load(path)
    assert [p for p, _ in loaded.named_predictors()] == [
        "solve.generate",
        "solve.regenerate",
        "solve.answer",
    ]
    assert loaded.solve.generate.demos[0]["code"] == "print(1)"


def test_teacher_traces_become_training_rows_for_each_call(tmp_path):
    examples = make_examples(6, seed=1)
    result = bootstrap_traces(
        ArithmeticPoT(),
        examples,
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        store=tmp_path / "traces",
        concurrency=2,
        progress=False,
    )
    assert result.kept == 6
    manifest = build_dataset(
        tmp_path / "traces", ArithmeticPoT(), tmp_path / "data", val_fraction=0
    )
    data, _ = load_dataset_dir(tmp_path / "data")
    rows = list(data["train"])
    by_predictor = {
        p: [r for r in rows if r["predictor"] == p] for p in ("solve.generate", "solve.answer")
    }
    assert len(by_predictor["solve.generate"]) == 6 and len(by_predictor["solve.answer"]) == 6
    assert all("print(" in r["completion"] for r in by_predictor["solve.generate"])
    assert manifest is not None
