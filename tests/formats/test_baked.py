"""The baked format: the inputs and the reply's order only (no instructions, field
descriptions or demos), replies parsed as the chat format's; one adapter may not hold two
predictors whose baked prompts look alike."""

import pytest
from test_formats import INPUTS, OUTPUTS, Triage

import apprentice as ap
from apprentice.formats import format_named


def test_the_prompt_is_the_inputs_and_the_reply_order_alone():
    fmt = format_named("baked")
    demo = {**INPUTS, **OUTPUTS, "ticket": "I was charged twice"}
    messages = fmt.render(Triage, [demo], INPUTS)
    # An empty system message keeps a template's default one out (SmolLM2, Qwen2.5).
    assert messages[0] == {"role": "system", "content": ""}
    assert [m["role"] for m in messages] == ["system", "user"]
    text = messages[1]["content"]
    assert text == ap.ChatFormat().user_message(Triage, INPUTS)
    assert "[[ticket]]\nThe app crashes when I log in." in text
    assert "Reply with the sections `[[label]]`, then `[[priority]]`" in text
    for gone in ("Triage a support ticket.", "the customer's message", "the queue", "charged"):
        assert gone not in text
    # Replies are the chat format's sections, typed fields and all.
    assert fmt.parse(Triage, fmt.render_outputs(Triage, OUTPUTS)) == OUTPUTS
    row = fmt.render_sft(Triage, [demo], INPUTS, OUTPUTS)
    assert row.messages == messages and row.to_dict()["format"] == "baked"
    # Far fewer characters than the full chat prompt of the same step.
    full = ap.ChatFormat().render(Triage, [demo], INPUTS)
    assert len(text) < 0.4 * sum(len(m["content"]) for m in full)


class Summarize(ap.Module):
    def __init__(self):
        self.short = ap.Predict(ap.Signature("text -> summary", "Summarize in five words."))
        self.long = ap.Predict(ap.Signature("text -> summary", "Summarize in a paragraph."))

    def forward(self, text):
        return ap.Prediction(summary=self.short(text=text).summary + self.long(text=text).summary)


def test_one_adapter_may_not_hold_two_steps_a_baked_prompt_cannot_tell_apart(tmp_path):
    from apprentice.dataset import build_dataset

    store = ap.TraceStore(tmp_path / "traces")
    ap.bootstrap_traces(
        Summarize(),
        [ap.Example(text="a b c").with_inputs("text")],
        teacher=ap.ScriptedLM(lambda sig, inputs: {"summary": "s"}),
        store=store,
        progress=False,
    )
    with pytest.raises(ValueError, match="predictors 'short' and 'long' read \\['text'\\]"):
        build_dataset(store, Summarize(), tmp_path / "data", format=format_named("baked"))
    # One adapter per predictor, or the chat format (its prompt has the instructions): fine.
    build_dataset(store, Summarize(), tmp_path / "a", format=format_named("baked"), multitask=False)
    build_dataset(store, Summarize(), tmp_path / "b", format=format_named("chat"))


def test_a_t5_student_is_refused_the_baked_format():
    from types import SimpleNamespace

    from apprentice.student_prompt import student_format

    with pytest.raises(
        ValueError, match="format 'baked' is a chat format.*use dataset.format 't5'"
    ):
        student_format("baked", "t5-small", SimpleNamespace(kind="seq2seq"))
    assert student_format("baked", "x", SimpleNamespace(kind="causal")).name == "baked"
