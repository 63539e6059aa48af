"""ScriptedLM: a teacher written as a function, answered through the active format."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

import apprentice as ap
from apprentice.formats import JSONFormat
from apprentice.lm import LMError, Request, ScriptedLM


def capital(signature, inputs):
    return {"answer": "Paris" if "France" in inputs["question"] else "unknown"}


def request_for(lm, signature="question -> answer", **inputs):
    """The Request a Predict would send, built the way Predict builds it."""
    predictor = ap.Predict(signature, lm=lm)
    return predictor._prepare(dict(inputs))[-1]


def test_a_dict_is_rendered_by_the_chat_format_and_parsed_back():
    lm = ScriptedLM(capital)
    prediction = ap.Predict("question -> answer", lm=lm)(question="Capital of France?")
    assert prediction.answer == "Paris"
    assert lm.history[-1].response.text == "[[answer]]\nParis"


def test_the_active_format_renders_the_answer():
    lm = ScriptedLM(lambda s, i: {"answer": "Paris", "confidence": 0.9})
    with ap.context(format=JSONFormat()):
        prediction = ap.Predict("question -> answer, confidence: float", lm=lm)(question="q")
    assert json.loads(lm.history[-1].response.text) == {"answer": "Paris", "confidence": 0.9}
    assert (prediction.answer, prediction.confidence) == ("Paris", 0.9)


def test_a_string_is_taken_as_the_raw_completion():
    lm = ScriptedLM(lambda s, i: "[[answer]]\n  Lyon  ")
    assert ap.Predict("question -> answer", lm=lm)(question="q").answer == "Lyon"
    assert lm.history[-1].response.text == "[[answer]]\n  Lyon  "


def test_the_function_sees_the_signature_and_inputs_once_per_sample():
    calls = []

    def script(signature, inputs):
        calls.append((list(signature.output_fields), dict(inputs)))
        return {"answer": str(len(calls))}

    lm = ScriptedLM(script)
    prediction = ap.Predict("question -> answer", lm=lm, n=3)(question="q")
    assert calls == [(["answer"], {"question": "q"})] * 3
    assert lm.history[-1].response.texts == [f"[[answer]]\n{i}" for i in (1, 2, 3)]
    assert prediction.answer == "1"


def test_exceptions_from_the_function_come_back_as_failures():
    def script(signature, inputs):
        if inputs["question"] == "boom":
            raise KeyError("no such city")
        return capital(signature, inputs)

    lm = ScriptedLM(script)
    batch = [request_for(lm, question="France?"), request_for(lm, question="boom")]
    results = lm.generate(batch, return_exceptions=True)
    assert results[0].text == "[[answer]]\nParis"
    assert isinstance(results[1], KeyError) and "no such city" in str(results[1])
    with pytest.raises(KeyError, match="no such city"):
        lm.generate(batch)
    with pytest.raises(KeyError, match="no such city"):
        ap.Predict("question -> answer", lm=lm)(question="boom")
    assert "--- error ---" in lm.inspect_history(1, file=io.StringIO())


def test_bad_return_values_are_named():
    wrong_type = ScriptedLM(lambda s, i: 42)
    with pytest.raises(TypeError, match="returned 42; return a dict or str"):
        ap.Predict("question -> answer", lm=wrong_type)(question="q")
    misspelt = ScriptedLM(lambda s, i: {"answr": "Paris"})
    with pytest.raises(
        ValueError, match=r"\{'answr': 'Paris'\}.*lacks output field\(s\) \['answer'\]"
    ):
        ap.Predict("question -> answer", lm=misspelt)(question="q")
    # Extra keys are fine: one script may serve several signatures.
    extra = ScriptedLM(lambda s, i: {"answer": "a", "reasoning": "r", "other": 1})
    assert ap.Predict("question -> answer", lm=extra)(question="q").answer == "a"


def test_raw_messages_without_a_signature_fail_clearly():
    lm = ScriptedLM(capital)
    with pytest.raises(LMError, match="carries no signature"):
        lm("hello")
    with pytest.raises(TypeError, match="ScriptedLM needs a function"):
        ScriptedLM("not callable")


def test_usage_history_and_cache_go_through_base_lm(tmp_path):
    calls = []

    def script(signature, inputs):
        calls.append(inputs)
        return {"answer": "Paris is the capital"}

    lm = ScriptedLM(script, model="script-v1", cache=tmp_path / "c.sqlite", history_size=2)
    qa = ap.Predict("question -> answer", lm=lm)
    for _ in range(3):
        qa(question="Capital of France?")
    assert len(calls) == 1  # the next two were cache hits
    assert (lm.usage.calls, lm.usage.cached_calls) == (1, 2)
    assert lm.usage.completion_tokens == 5  # whitespace words of "[[answer]]\nParis is the capital"
    assert lm.usage.prompt_tokens > 0
    assert len(lm.history) == 2 and lm.history[-1].response.cached
    assert "--- completion 0 (cached) ---" in lm.inspect_history(1, file=io.StringIO())
    assert lm.identity["model"] == "script-v1" and lm.identity["backend"] == "scripted"


def test_scripted_lm_cannot_be_saved_in_a_program():
    with pytest.raises(NotImplementedError, match="ScriptedLM cannot be saved"):
        ScriptedLM(capital).to_config()


def test_requests_built_by_hand_still_work_with_meta():
    lm = ScriptedLM(capital)
    request = request_for(lm, question="France")
    assert isinstance(request, Request)
    assert lm.generate([request])[0].text == "[[answer]]\nParis"


def test_agenerate_and_aforward_run_the_script():
    lm = ScriptedLM(capital)
    qa = ap.Predict("question -> answer", lm=lm)

    async def main():
        return await asyncio.gather(*(qa.aforward(question=f"France {i}?") for i in range(5)))

    assert [p.answer for p in asyncio.run(main())] == ["Paris"] * 5
    request = request_for(lm, question="Spain?")
    assert asyncio.run(lm.agenerate([request]))[0].text == "[[answer]]\nunknown"
