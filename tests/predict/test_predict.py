import asyncio
import json

import pytest

import apprentice as ap


def capital_teacher(signature, inputs):
    out = {"answer": "Paris" if "France" in inputs.get("question", "") else "unknown"}
    if "reasoning" in signature.output_fields:
        out["reasoning"] = "The capital of France is Paris."
    return out


def test_predict_renders_sends_and_parses():
    lm = ap.ScriptedLM(capital_teacher)
    ap.configure(lm=lm)
    pred = ap.Predict("question -> answer")(question="What is the capital of France?")
    assert pred.answer == "Paris"
    sent = lm.history[-1].request
    assert sent.messages[-1]["content"].startswith("[[question]]\nWhat is the capital of France?")


def test_chain_of_thought_only_adds_reasoning():
    ap.configure(lm=ap.ScriptedLM(capital_teacher))
    qa = ap.ChainOfThought("question -> answer")
    assert list(qa.signature.output_fields) == ["reasoning", "answer"]
    pred = qa(question="What is the capital of France?")
    assert (pred.reasoning, pred.answer) == ("The capital of France is Paris.", "Paris")


def test_missing_extra_and_positional_inputs_are_named():
    qa = ap.Predict("question, context -> answer", lm=ap.ScriptedLM(capital_teacher))
    with pytest.raises(TypeError, match=r"missing input\(s\) \['context'\]"):
        qa(question="q")
    with pytest.raises(TypeError, match=r"unexpected input\(s\) \['bogus'\]"):
        qa(question="q", context="c", bogus=1)
    with pytest.raises(TypeError, match="keywords"):
        qa("q")


def test_no_lm_configured_says_how_to_configure():
    with pytest.raises(RuntimeError, match=r"ap.configure\(lm=...\)"):
        ap.Predict("q -> a")(q="x")


def test_unparseable_and_wrongly_typed_completions_raise_parse_error():
    garbage = ap.ScriptedLM(lambda sig, inputs: "I refuse to follow the format")
    with pytest.raises(ap.ParseError) as err:
        ap.Predict("q -> a, b", lm=garbage)(q="x")
    assert err.value.raw == "I refuse to follow the format"
    assert err.value.missing == ["a", "b"]
    wrong = ap.ScriptedLM(lambda sig, inputs: {"n": "lots"})
    with pytest.raises(ap.ParseError, match="'lots' is not a valid int"):
        ap.Predict("q -> n: int", lm=wrong)(q="x")


def test_per_call_lm_and_context_override_and_predictor_binding_order():
    a = ap.ScriptedLM(lambda s, i: {"a": "from-a"})
    b = ap.ScriptedLM(lambda s, i: {"a": "from-b"})
    ap.configure(lm=a)
    p = ap.Predict("q -> a")
    assert p(q="x").a == "from-a"
    with ap.context(lm=b):
        assert p(q="x").a == "from-b"
    p.lm = b
    assert p(q="x").a == "from-b"
    assert p(q="x", lm=a).a == "from-a"


def test_sampling_config_and_n_completions():
    calls = []

    def teacher(sig, inputs):
        calls.append(1)
        return {"a": f"v{len(calls)}"}

    lm = ap.ScriptedLM(teacher)
    p = ap.Predict("q -> a", lm=lm, temperature=0.7, n=3, max_tokens=50)
    pred = p(q="x")
    assert pred.completions.a == ["v1", "v2", "v3"] and pred.a == "v1"
    request = lm.history[-1].request
    assert (request.temperature, request.n, request.max_tokens) == (0.7, 3, 50)
    assert p(q="x", config={"temperature": 0.1, "n": 1}).a == "v4"
    with pytest.raises(TypeError, match="unknown sampling option"):
        ap.Predict("q -> a", lm=lm).update_config(temprature=1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ap.Predict("q -> a", n=0)


def test_n_completions_keep_the_parseable_ones():
    replies = iter(["nonsense", "[[a]]\n1", "[[a]]\n2"])
    p = ap.Predict("q -> a: int", lm=ap.ScriptedLM(lambda s, i: next(replies)), n=3)
    assert p(q="x").completions.a == [1, 2]


def test_demos_are_rendered_as_turns():
    lm = ap.ScriptedLM(capital_teacher)
    p = ap.Predict(
        "question -> answer", lm=lm, demos=[{"question": "Capital of Peru?", "answer": "Lima"}]
    )
    p(question="What is the capital of France?")
    messages = lm.history[-1].request.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "[[answer]]\nLima"


def test_async_forward():
    ap.configure(lm=ap.ScriptedLM(capital_teacher))
    qa = ap.ChainOfThought("question -> answer")

    async def main():
        return await asyncio.gather(*(qa.acall(question=f"France {i}?") for i in range(5)))

    preds = asyncio.run(main())
    assert [p.answer for p in preds] == ["Paris"] * 5


def test_observers_see_every_step_with_its_prompt_and_outputs():
    steps = []
    lm = ap.ScriptedLM(capital_teacher)
    with ap.context(lm=lm, observers=(steps.append,)):
        ap.ChainOfThought("question -> answer")(question="France?")
        with pytest.raises(ap.ParseError):
            ap.Predict("q -> a, b", lm=ap.ScriptedLM(lambda s, i: "???"))(q="x")
    assert len(steps) == 2
    ok, bad = steps
    assert ok.outputs[0]["answer"] == "Paris" and ok.error is None
    assert ok.messages[-1]["content"].startswith("[[question]]\nFrance?")
    assert ok.lm_identity["backend"] == "scripted"
    assert isinstance(bad.error, ap.ParseError) and bad.completions == ["???"]


class MultiHop(ap.Module):
    def __init__(self, hops=2):
        self.hops = [ap.Predict("context, question -> query") for _ in range(hops)]
        self.answer = ap.ChainOfThought("context, question -> answer")
        self.helpers = {"rank": ap.Predict("query -> score: float")}

    def forward(self, question):
        context = []
        for hop in self.hops:
            context.append(hop(context=context, question=question).query)
        return self.answer(context=context, question=question)


def test_named_predictors_have_stable_dotted_paths_and_set_lm_binds_all():
    program = MultiHop()
    paths = [path for path, _ in program.named_predictors()]
    assert paths == ["hops.0", "hops.1", "answer", "helpers.rank"]
    lm = ap.ScriptedLM(lambda s, i: {"query": "q", "answer": "a", "reasoning": "r"})
    program.set_lm(lm)
    assert all(p.lm is lm for p in program.predictors())
    assert program.get_lm() is lm
    assert program(question="x").answer == "a"


def test_deepcopy_copies_demos_but_shares_the_lm():
    program = MultiHop()
    lm = ap.ScriptedLM(capital_teacher)
    program.set_lm(lm)
    program.answer.demos.append(ap.Example(question="q", answer="a"))
    clone = program.deepcopy()
    clone.answer.demos.clear()
    assert len(program.answer.demos) == 1
    assert clone.answer.lm is lm


def test_save_and_load_round_trip_demos_instructions_config_and_lm(tmp_path):
    program = MultiHop()
    program.answer.demos = [ap.Example(context=["c"], question="q", reasoning="r", answer="a")]
    program.answer.signature = program.answer.signature.with_instructions("Answer tersely.")
    program.answer.update_config(temperature=0.3, max_tokens=77)
    program.set_lm(ap.OpenAILM("gpt-test", base_url="http://127.0.0.1:9/v1", api_key="sk-secret"))
    path = program.save(tmp_path / "program.json")
    text = path.read_text()
    assert "sk-secret" not in text
    state = json.loads(text)
    assert state["schema"] == "apprentice.program" and state["version"] == 1

    fresh = MultiHop().load(path, allowed_endpoints={"http://127.0.0.1:9/v1": "OPENAI_API_KEY"})
    assert fresh.answer.signature.instructions == "Answer tersely."
    assert fresh.answer.demos == [
        ap.Example(context=["c"], question="q", reasoning="r", answer="a")
    ]
    assert fresh.answer.config == {"temperature": 0.3, "max_tokens": 77, "n": 1}
    assert fresh.answer.lm.model == "gpt-test"
    assert fresh.answer.lm.base_url == "http://127.0.0.1:9/v1"


def test_loading_into_a_different_program_fails_clearly(tmp_path):
    path = MultiHop(hops=2).save(tmp_path / "p.json")
    with pytest.raises(
        ap.ProgramFileError, match=r"in the file but not in the program \['hops.1'\]"
    ):
        MultiHop(hops=1).load(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ap.ProgramFileError, match="not valid JSON"):
        MultiHop().load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no saved program"):
        MultiHop().load(tmp_path / "missing.json")


def _saved_multihop(tmp_path):
    program = MultiHop()
    program.answer.signature = program.answer.signature.with_instructions("Saved.")
    program.answer.demos = [ap.Example(context=["c"], question="q", reasoning="r", answer="a")]
    program.answer.update_config(temperature=0.5)
    return program.dump_state()


def _break_last_predictor(state, **entry):
    state["predictors"]["helpers.rank"] = {**state["predictors"]["helpers.rank"], **entry}
    return json.dumps(state)


# Each: a file whose last predictor (or whole) is malformed, and what the error names.
MALFORMED = {
    "unknown sampling option": (
        lambda s: _break_last_predictor(s, config={"bogus": 1}),
        r"helpers.rank: config.bogus: Extra inputs",
    ),
    "n of 0": (lambda s: _break_last_predictor(s, config={"n": 0}), r"helpers.rank: config.n"),
    "temperature as text": (
        lambda s: _break_last_predictor(s, config={"temperature": "hot"}),
        r"config.temperature",
    ),
    "demo not an object": (lambda s: _break_last_predictor(s, demos=[1]), r"demos.0"),
    "field not an object": (
        lambda s: _break_last_predictor(s, signature={"fields": [1]}),
        r"signature.fields.0",
    ),
    "lm not an object": (lambda s: _break_last_predictor(s, lm=5), r"helpers.rank: lm"),
    "lm of unknown backend": (
        lambda s: _break_last_predictor(s, lm={"backend": "nope"}),
        r"helpers.rank: saved LM has backend 'nope'",
    ),
    "predictor not an object": (
        lambda s: json.dumps({**s, "predictors": {**s["predictors"], "helpers.rank": 7}}),
        r"helpers.rank: a saved predictor is a JSON object, got int",
    ),
    "predictors a list": (lambda s: json.dumps({**s, "predictors": []}), r"predictors must be"),
    "version as text": (lambda s: json.dumps({**s, "version": "x"}), r"version must be an int"),
    "a JSON list": (lambda s: "[]", r"a JSON list, not an object"),
    "nested 100,000 deep": (lambda s: "[" * 100_000 + "]" * 100_000, r"nested too deeply"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_program_file_raises_program_file_error_and_changes_nothing(tmp_path, case):
    make, names = MALFORMED[case]
    path = tmp_path / "program.json"
    path.write_text(make(_saved_multihop(tmp_path)))
    program = MultiHop()
    program.answer.update_config(max_tokens=9)
    before = program.dump_state()
    with pytest.raises(ap.ProgramFileError, match=names):
        program.load(path, trusted=True)
    assert program.dump_state() == before  # the predictors before the bad one were not loaded
    assert issubclass(ap.ProgramFileError, ValueError)
