"""ap.enable_tracing: spans of program runs, modules, predictors and LM calls, read back
with OpenTelemetry's own in-memory exporter."""

from __future__ import annotations

import asyncio
import json

import pytest

import apprentice as ap

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

PRICE = ap.Price(input=1.0, output=2.0)  # dollars per million tokens


def script(signature, inputs):
    if "query" in signature.output_fields:
        return {"query": f"about {inputs['question']}"}
    if inputs["question"] == "about boom":
        raise RuntimeError("the teacher fell over")
    return {"answer": "42"}


class Answer(ap.Module):
    def __init__(self) -> None:
        self.answer = ap.Predict("question -> answer")

    def forward(self, question: str) -> ap.Prediction:
        return self.answer(question=question)


class TwoSteps(ap.Module):
    def __init__(self) -> None:
        self.rewrite = ap.Predict("question -> query")
        self.hop = Answer()

    def forward(self, question: str) -> ap.Prediction:
        return self.hop(question=self.rewrite(question=question).query)


@pytest.fixture
def exporter():
    exporter = InMemorySpanExporter()
    ap.enable_tracing(exporter, batch=False)
    yield exporter
    ap.disable_tracing()


def _program() -> tuple[TwoSteps, ap.ScriptedLM]:
    lm = ap.ScriptedLM(
        script, model="teacher-1", adapter="triage", adapter_hash="ab12", price=PRICE
    )
    program = TwoSteps()
    program.set_lm(lm)
    return program, lm


def _tree(spans) -> list[tuple[int, str]]:
    """(depth, name) in start order, from the spans' parent links."""
    by_id = {s.context.span_id: s for s in spans}

    def depth(span) -> int:
        return 0 if span.parent is None else 1 + depth(by_id[span.parent.span_id])

    return [(depth(s), s.name) for s in sorted(spans, key=lambda s: s.start_time)]


EXPECTED_TREE = [
    (0, "program TwoSteps"),
    (1, "predictor rewrite"),
    (2, "chat teacher-1"),
    (1, "module Answer"),
    (2, "predictor hop.answer"),
    (3, "chat teacher-1"),
]


def test_a_program_run_is_a_tree_of_module_predictor_and_lm_spans(exporter):
    program, lm = _program()
    assert program(question="life").answer == "42"
    spans = exporter.get_finished_spans()
    assert _tree(spans) == EXPECTED_TREE
    assert len({s.context.trace_id for s in spans}) == 1

    root = next(s for s in spans if s.name == "program TwoSteps")
    assert root.attributes["apprentice.kind"] == "program"
    assert json.loads(root.attributes["apprentice.inputs"]) == {"question": "life"}
    assert json.loads(root.attributes["apprentice.outputs"]) == {"answer": "42"}
    rewrite = next(s for s in spans if s.name == "predictor rewrite")
    assert rewrite.attributes["apprentice.predictor"] == "rewrite"
    assert json.loads(rewrite.attributes["apprentice.outputs"]) == {"query": "about life"}

    calls = [s for s in spans if s.name.startswith("chat")]
    for span, entry in zip(sorted(calls, key=lambda s: s.start_time), lm.history, strict=True):
        usage = entry.response.usage
        attributes = span.attributes
        assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
        assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
        assert attributes["apprentice.cost_usd"] == pytest.approx(
            (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
        )
        assert attributes["gen_ai.provider.name"] == "scripted"
        assert (attributes["apprentice.adapter"], attributes["apprentice.adapter_hash"]) == (
            "triage",
            "ab12",
        )
        assert json.loads(attributes["apprentice.messages"]) == list(entry.request.messages)
        assert json.loads(attributes["apprentice.completions"]) == entry.response.texts
        assert attributes["apprentice.cached"] is False
    assert sum(s.attributes["apprentice.cost_usd"] for s in calls) == pytest.approx(lm.usage.cost)


def test_async_runs_give_the_same_tree(exporter):
    program, _ = _program()
    assert asyncio.run(program.acall(question="life")).answer == "42"
    assert _tree(exporter.get_finished_spans()) == EXPECTED_TREE


def test_a_failing_lm_call_marks_its_spans_as_errors(exporter):
    program, _ = _program()
    with pytest.raises(Exception, match="the teacher fell over"):
        program(question="boom")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("program TwoSteps", "predictor hop.answer"):
        assert spans[name].status.status_code == StatusCode.ERROR
    failed = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")][-1]
    assert failed.status.status_code == StatusCode.ERROR
    assert "the teacher fell over" in failed.events[0].attributes["exception.message"]
    assert spans["predictor rewrite"].status.status_code == StatusCode.UNSET


def test_off_by_default_and_off_in_a_context_block(exporter):
    program, _ = _program()
    with ap.context(tracer=None):
        program(question="life")
    assert exporter.get_finished_spans() == ()
    tracer = ap.settings.tracer
    ap.configure(tracer=None)  # off everywhere; the provider stays up (disable_tracing ends it)
    program(question="life")
    assert exporter.get_finished_spans() == ()
    assert ap.settings.tracer is None
    with ap.context(tracer=tracer):  # on for one block only
        program(question="life")
    assert _tree(exporter.get_finished_spans()) == EXPECTED_TREE


def test_a_tracer_provider_of_ones_own(exporter):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    mine = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mine))
    tracer = ap.enable_tracing(tracer_provider=provider)
    program, _ = _program()
    program(question="life")
    assert len(mine.get_finished_spans()) == 6 and exporter.get_finished_spans() == ()
    with ap.context(tracer=None):  # a block without spans, even with tracing on
        program(question="life")
    assert len(mine.get_finished_spans()) == 6
    assert ap.context(tracer=tracer)  # a tracer is a valid setting


def test_bad_tracing_arguments_are_refused():
    with pytest.raises(TypeError, match="exporter=42 is not a span exporter"):
        ap.enable_tracing(42)
    with pytest.raises(ValueError, match="not both"):
        ap.enable_tracing(InMemorySpanExporter(), tracer_provider=TracerProvider())
    with pytest.raises(TypeError, match="tracer='yes' is not an OpenTelemetry Tracer"):
        ap.configure(tracer="yes")
    assert ap.settings.tracer is None


def test_disable_tracing_exports_what_a_batching_provider_still_holds():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from recipes.demo.task import TicketTriage, teacher

    memory = InMemorySpanExporter()
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(teacher))
    ap.enable_tracing(memory)  # batching: spans wait for the processor's next round
    try:
        program(ticket="I was charged twice for order A12345.")
    finally:
        ap.disable_tracing()
    spans = memory.get_finished_spans()
    assert len(spans) >= 5  # program, modules, predictors, LM calls
    assert ap.settings.tracer is None
    program(ticket="My parcel for order A54321 never arrived.")  # off: nothing more
    assert memory.get_finished_spans() == spans
