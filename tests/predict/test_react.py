"""ReAct with scripted teachers: the tool-call loop, what the model is told when a call goes
wrong, max_iters, the truncation policy, and the rows a ReAct trace becomes."""

from __future__ import annotations

import json
import re

import pytest
from recipes.react_agent.task import ShopAgent, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset import build_dataset, load_dataset_dir
from apprentice.predict.react import render_trajectory
from apprentice.traces import TraceStore, bootstrap_traces


def lookup(city: str) -> int:
    """Population of a city, in thousands."""
    return {"avalon": 120, "brindle": 45}[city.lower()]


def double(n: int) -> int:
    """Twice n."""
    return 2 * n


def _turn(tool, args, thought="go"):
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


def _agent(script, max_iters=5, **options):
    """A ReAct program whose teacher plays the turns in ``script`` (a list of replies, dicts
    or raw text), then answers from the last observation."""
    program = ap.ReAct("question -> answer", tools=[lookup, double], max_iters=max_iters, **options)
    seen: list[str] = []

    def teach(signature, inputs):
        if "next_tool_name" in signature.output_fields:
            seen.append(inputs["trajectory"])
            return script[len(seen) - 1] if len(seen) <= len(script) else _turn("finish", {})
        last = re.findall(r"observation: (.*)", inputs["trajectory"])
        return {"reasoning": "from the trajectory", "answer": last[-2] if len(last) > 1 else ""}

    program.set_lm(ap.ScriptedLM(teach))
    return program, seen


def test_tool_calls_flow_into_observations_and_the_answer():
    program, seen = _agent([_turn("lookup", {"city": "Avalon"}), _turn("double", {"n": 120})])
    with ap.capture(program) as steps:
        pred = program(question="twice the population of Avalon?")
    assert pred.answer == "240"
    assert [(t["tool_name"], t["observation"]) for t in pred.trajectory] == [
        ("lookup", "120"),
        ("double", "240"),
        ("finish", "Done."),
    ]
    assert seen[0] == "(no turns yet)"
    assert 'tool: lookup({"city": "Avalon"})\nobservation: 120' in seen[1]
    # The trajectory is in the trace: each turn's step holds the trajectory it was shown.
    assert [s.predictor for s in steps] == ["react"] * 3 + ["extract"]
    assert [s.inputs["trajectory"] for s in steps[:3]] == seen
    assert "observation: 240" in steps[3].inputs["trajectory"]


def test_a_tool_error_comes_back_as_an_observation():
    program, seen = _agent(
        [_turn("lookup", {"city": "Atlantis"}), _turn("lookup", {"city": "brindle"})]
    )
    pred = program(question="population of Atlantis?")
    assert pred.trajectory[0]["observation"] == "Error: lookup raised KeyError: 'atlantis'"
    assert "observation: Error: lookup raised KeyError" in seen[1]
    assert pred.trajectory[1]["observation"] == "45"  # the agent went on after the error


def test_an_unknown_tool_is_a_parse_failure_the_model_is_told_about():
    program, seen = _agent([_turn("teleport", {}), _turn("lookup", {"city": "Avalon"})])
    with ap.capture(program) as steps:
        pred = program(question="?")
    told = pred.trajectory[0]["observation"]
    assert "next_tool_name" in told and "teleport" in told
    assert "['lookup', 'double', 'finish']" in told
    assert "tool_name" not in pred.trajectory[0]
    assert told in seen[1] and pred.trajectory[1]["observation"] == "120"
    assert steps[0].error is not None and steps[1].error is None  # marked, never a row


def test_args_that_are_not_a_json_object_are_a_parse_failure_too():
    bad = "[[next_thought]]\nhm\n\n[[next_tool_name]]\nlookup\n\n[[next_tool_args]]\ncity=Avalon"
    program, _ = _agent([bad])
    pred = program(question="?")
    assert "next_tool_args" in pred.trajectory[0]["observation"]


def test_bad_arguments_are_checked_against_the_tools_signature():
    program, _ = _agent(
        [
            _turn("lookup", {"town": "Avalon"}),
            _turn("double", {"n": "21"}),  # lax typing: "21" is a fine int
            _turn("double", {"n": "many"}),
        ]
    )
    pred = program(question="?")
    first, second, third = (t["observation"] for t in pred.trajectory[:3])
    assert first.startswith("Error: bad arguments for lookup:")
    assert "city: Field required" in first and "town: Extra inputs are not permitted" in first
    assert 'Its arguments are {"city": {"type": "string"}}' in first
    assert second == "42"
    assert third.startswith("Error: bad arguments for double: n:")


def test_max_iters_ends_an_agent_that_never_finishes():
    program, seen = _agent([_turn("double", {"n": i}) for i in range(10)], max_iters=3)
    with ap.capture(program) as steps:
        pred = program(question="?")
    assert len(seen) == 3 and len(pred.trajectory) == 3
    assert [s.predictor for s in steps] == ["react"] * 3 + ["extract"]
    assert pred.answer == "2"  # the extract step still answers, from what was gathered


def test_truncation_keeps_the_newest_turns_and_cuts_long_observations():
    turns = [
        {"thought": f"t{i}", "tool_name": "double", "tool_args": {"n": i}, "observation": str(i)}
        for i in range(1, 21)
    ]
    turns[-1]["observation"] = "x" * 500
    text = render_trajectory(turns, max_trajectory_chars=400, max_observation_chars=100)
    assert text.startswith("(turns 1-")  # the oldest turns are the ones left out
    assert "x" * 100 + "... [400 more characters cut]" in text
    assert "--- turn 20 ---" in text and "--- turn 19 ---" in text
    first_kept = int(re.search(r"turns 1-(\d+) left out", text).group(1)) + 1
    assert f"--- turn {first_kept} ---" in text and f"--- turn {first_kept - 1} ---" not in text
    assert len(text) <= 400 + 60  # the budget plus the one line that says what was left out
    # The newest turn is always shown, even when it alone is over the budget.
    alone = render_trajectory(turns, max_trajectory_chars=10, max_observation_chars=1000)
    assert alone.startswith("(turns 1-19 left out") and alone.endswith("x" * 500)


def test_the_agent_sees_the_truncated_trajectory_and_keeps_the_full_one():
    program, seen = _agent(
        [_turn("double", {"n": i}) for i in range(8)],
        max_iters=8,
        max_trajectory_chars=150,
        max_observation_chars=40,
    )
    pred = program(question="?")
    assert len(pred.trajectory) == 8
    assert all(len(s) <= 150 + 60 for s in seen)
    assert "left out" in seen[-1] and "--- turn 7 ---" in seen[-1]


def test_construction_errors_say_what_to_change():
    with pytest.raises(ValueError, match="not 'finish'"):
        ap.ReAct("q -> a", tools=[lookup, lookup])
    with pytest.raises(ValueError, match="already has \\['trajectory'\\]"):
        ap.ReAct("q, trajectory -> a", tools=[lookup])
    with pytest.raises(TypeError, match="must be a callable"):
        ap.ReAct("q -> a", tools=["lookup"])


def test_a_saved_react_program_loads_into_a_fresh_one(tmp_path):
    program, _ = _agent([])
    program.react.demos = [
        ap.Example(
            question="q",
            trajectory="t",
            next_thought="n",
            next_tool_name="finish",
            next_tool_args={},
        )
    ]
    path = program.save(tmp_path / "agent.json")
    restored = ap.ReAct("question -> answer", tools=[lookup, double]).load(path)
    assert [p for p, _ in restored.named_predictors()] == ["react", "extract"]
    assert restored.react.demos[0].next_tool_name == "finish"


# -- distillation: one row per turn; episodes kept or dropped by the final metric ----------
def _half_wrong_teacher(signature, inputs):
    """The shop teacher, except that it answers wrong for questions starting with 'How'."""
    answer = teacher(signature, inputs)
    if "answer" in answer and inputs["question"].startswith("How"):
        answer = {**answer, "answer": answer["answer"] + 1}
    return answer


def test_each_turn_is_a_row_and_failed_episodes_are_dropped_whole(tmp_path):
    examples = make_examples(30)
    bootstrap_traces(
        ShopAgent(),
        examples,
        teacher=ap.ScriptedLM(_half_wrong_teacher),
        metric=metric,
        store=tmp_path / "traces",
        progress=False,
    )
    manifest = build_dataset(
        tmp_path / "traces", ShopAgent(), tmp_path / "ds", threshold=1.0, val_fraction=0.0
    )
    wrong = sum(e.question.startswith("How") for e in examples)
    assert 0 < wrong < len(examples)
    assert manifest.drops == {"score below threshold": wrong}
    kept = len(examples) - wrong
    # Each kept episode is four turns. Checked per episode first, so that a count that is off
    # (CI once saw 77 react rows for 76) names the episode and the steps it recorded.
    odd = {
        t.example_id: [(s.predictor, s.cached, s.completion) for s in t.steps]
        for t in TraceStore(tmp_path / "traces")
        if t.score == 1.0 and sum(s.predictor == "agent.react" for s in t.steps) != 4
    }
    assert odd == {}
    assert manifest.counts["train"] == {"agent.extract": kept, "agent.react": 4 * kept}
    data, _ = load_dataset_dir(tmp_path / "ds")
    rows = [r for r in data["train"] if r["predictor"] == "agent.react"]
    first = [r for r in rows if r["example_id"] == rows[0]["example_id"]]
    # The rows of one episode, in turn order: each shows the trajectory so far and the
    # turn's own reply as the target.
    assert [
        re.search(r"\[\[next_tool_name\]\]\n(\w+)", r["completion"]).group(1) for r in first
    ] == [
        "price",
        "price",
        "calculate",
        "finish",
    ]
    prompts = [r["messages"][-1]["content"] for r in first]
    assert "(no turns yet)" in prompts[0]
    assert [p.count("--- turn ") for p in prompts] == [0, 1, 2, 3]


def test_a_turn_that_failed_to_parse_is_no_row_but_its_episode_stays(tmp_path):
    def stumbling(signature, inputs):
        if "next_tool_name" in signature.output_fields and inputs["trajectory"] == "(no turns yet)":
            return _turn("weigh", {})  # unknown tool: the agent is told and recovers
        return teacher(signature, inputs)

    bootstrap_traces(
        ShopAgent(),
        make_examples(3),
        teacher=ap.ScriptedLM(stumbling),
        metric=metric,
        store=tmp_path / "traces",
        progress=False,
    )
    manifest = build_dataset(
        tmp_path / "traces", ShopAgent(), tmp_path / "ds", threshold=1.0, val_fraction=0.0
    )
    assert manifest.drops == {"step failed to parse": 3}
    assert manifest.counts["train"] == {"agent.extract": 3, "agent.react": 12}


def test_tools_are_described_by_name_docstring_and_hints():
    def convert(amount: float, unit: str = "km") -> str:
        """Converts a distance.

        Second paragraph: not shown."""
        return f"{amount} {unit}"

    tool = ap.Tool(convert)
    assert tool.describe() == (
        "convert: Converts a distance. Arguments: "
        '{"amount": {"type": "number"}, "unit": {"default": "km", "type": "string"}}'
    )
    assert tool.validate({"amount": "2.5"}) == {"amount": 2.5, "unit": "km"}
    renamed = ap.Tool(convert, name="to_km", desc="Distance in km.")
    program = ap.ReAct("q -> a", tools=[renamed])
    assert list(program.tools) == ["to_km", "finish"]
    assert "(1) to_km: Distance in km. Arguments:" in program.react.signature.instructions


def triple(n: int) -> int:
    """Three times n."""
    return 3 * n


def test_a_saved_react_loaded_with_other_tools_lists_the_current_tools(tmp_path, caplog):
    program, _ = _agent([])
    task = "Answer with a number of thousands."
    program.react.signature = program.react.signature.with_instructions(
        program.react.signature.instructions.replace(program.signature.instructions, task, 1)
    )
    program.react.demos = [
        ap.Example(
            question="q",
            trajectory="t",
            next_thought="n",
            next_tool_name="double",
            next_tool_args={"n": 1},
        )
    ]
    path = program.save(tmp_path / "agent.json")
    assert "double" in path.read_text()

    restored = ap.ReAct("question -> answer", tools=[lookup, triple])
    restored.set_lm(
        ap.ScriptedLM(
            lambda sig, inp: (
                _turn("finish", {})
                if "next_tool_name" in sig.output_fields
                else {"reasoning": "r", "answer": "1"}
            )
        )
    )
    with caplog.at_level("WARNING", logger="apprentice.predict.react"):
        restored.load(path)
    with ap.capture(restored) as steps:
        restored(question="?")
    system = steps[0].messages[0]["content"]
    assert "triple: Three times n." in system
    assert "double" not in system and "Twice n." not in system
    assert task in system  # the saved task instructions are kept
    assert "call tools this ReAct does not have ['double']" in caplog.text


def test_react_instructions_not_in_reacts_form_are_kept_and_the_load_says_so(tmp_path, caplog):
    program, _ = _agent([])
    program.react.signature = program.react.signature.with_instructions("Do it your way.")
    path = program.save(tmp_path / "agent.json")
    restored = ap.ReAct("question -> answer", tools=[lookup, triple])
    with caplog.at_level("WARNING", logger="apprentice.predict.react"):
        restored.load(path)
    assert restored.react.signature.instructions == "Do it your way."
    assert "tool list could not be rebuilt" in caplog.text


def dump(n: int) -> str:
    """A tool whose result is huge."""
    return "y" * n


def test_a_12_mb_tool_result_stores_what_the_model_saw_and_what_was_cut(tmp_path):
    def teach(signature, inputs):
        if "next_tool_name" in signature.output_fields:
            if inputs["trajectory"] == "(no turns yet)":
                return _turn("dump", {"n": 12_000_000})
            return _turn("finish", {})
        return {"reasoning": "r", "answer": "a"}

    program = ap.ReAct("question -> answer", tools=[dump])
    bootstrap_traces(
        program,
        [ap.Example(question="big?", answer="a").with_inputs("question")],
        teacher=ap.ScriptedLM(teach),
        store=tmp_path / "traces",
        progress=False,
    )
    lines = (tmp_path / "traces" / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert len(lines[0]) < 100_000  # was > 12,000,000: the whole result in the trajectory
    trace = ap.Trace.from_dict(json.loads(lines[0]))
    turn = trace.prediction["trajectory"][0]
    assert turn["observation"] == "y" * 1500 and turn["observation_cut"] == 12_000_000 - 1500
    shown = trace.steps[1].inputs["trajectory"]  # the second turn's prompt
    assert "y" * 1500 + "... [11998500 more characters cut]" in shown
    assert "y" * 1501 not in shown
