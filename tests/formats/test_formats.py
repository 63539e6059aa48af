import enum
from typing import Literal

import pydantic
import pytest

import apprentice as ap


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Ticket(pydantic.BaseModel):
    title: str
    votes: int


class Triage(ap.Signature):
    """Triage a support ticket."""

    ticket: str = ap.InputField(desc="the customer's message")
    context: list[str] = ap.InputField()
    label: Literal["bug", "billing", "other"] = ap.OutputField(desc="the queue")
    priority: Priority = ap.OutputField()
    score: float = ap.OutputField()
    urgent: bool = ap.OutputField()
    tags: list[str] = ap.OutputField()
    summary: Ticket = ap.OutputField()


OUTPUTS = {
    "label": "bug",
    "priority": Priority.HIGH,
    "score": 0.75,
    "urgent": True,
    "tags": ["login", "crash"],
    "summary": Ticket(title="App crashes", votes=3),
}
INPUTS = {"ticket": "The app crashes when I log in.", "context": ["FAQ: restart", "Known bug #12"]}
FORMATS = [ap.ChatFormat(), ap.JSONFormat()]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_typed_outputs_round_trip(fmt):
    text = fmt.render_outputs(Triage, OUTPUTS)
    assert fmt.parse(Triage, text) == OUTPUTS


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_prompt_has_instructions_descriptions_inputs_and_demos(fmt):
    demo = {**INPUTS, **OUTPUTS, "ticket": "I was charged twice", "label": "billing"}
    messages = fmt.render(Triage, [demo], INPUTS)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert "Triage a support ticket." in system
    assert "the customer's message" in system and "the queue" in system
    assert "bug; billing; other" in system  # the Literal's options are spelled out
    assert "I was charged twice" in messages[1]["content"]
    assert fmt.parse(Triage, messages[2]["content"])["label"] == "billing"
    assert "[2] Known bug #12" in messages[3]["content"]  # list[str] inputs are numbered


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_training_row_is_the_inference_prompt_plus_the_target(fmt):
    row = fmt.render_sft(Triage, [], INPUTS, OUTPUTS)
    assert row.messages == fmt.render(Triage, [], INPUTS)
    assert row.completion == fmt.render_outputs(Triage, OUTPUTS)
    assert row.to_dict()["format"] == fmt.name


def test_chat_parse_reports_missing_and_invalid_fields_with_the_raw_text():
    sig = ap.make_signature("q -> answer: int, label: Literal['a', 'b'], note")
    raw = "[[answer]]\nforty-two\n\n[[label]]\nc"
    with pytest.raises(ap.ParseError) as err:
        ap.ChatFormat().parse(sig, raw)
    exc = err.value
    assert exc.raw == raw
    assert exc.missing == ["note"]
    assert set(exc.invalid) == {"answer", "label"}
    assert "forty-two" in exc.invalid["answer"]
    assert "'c' is not one of ['a', 'b']" in exc.invalid["label"]
    assert "forty-two" in str(exc)


def test_chat_parse_is_lenient_where_it_is_safe():
    sig = ap.make_signature("q -> answer: int, label: Literal['Yes', 'No']")
    text = "Sure!\n[[ answer ]]\n 1,234 \n [[label]] \n`yes`\n"
    assert ap.ChatFormat().parse(sig, text) == {"answer": 1234, "label": "Yes"}
    single = ap.make_signature("q -> answer")
    assert ap.ChatFormat().parse(single, "  just the answer \n") == {"answer": "just the answer"}


def test_json_parse_accepts_fences_and_reports_garbage():
    sig = ap.make_signature("q -> answer: int, why")
    fenced = 'Here you go:\n```json\n{"answer": 3, "why": "because"}\n```'
    assert ap.JSONFormat().parse(sig, fenced) == {"answer": 3, "why": "because"}
    with pytest.raises(ap.ParseError, match="no JSON object"):
        ap.JSONFormat().parse(sig, "I don't know")
    with pytest.raises(ap.ParseError) as err:
        ap.JSONFormat().parse(sig, '{"answer": "many"}')
    assert err.value.missing == ["why"] and "answer" in err.value.invalid


def test_messages_to_prompt_is_deterministic_and_ends_with_the_assistant_turn():
    from apprentice.formats import messages_to_prompt

    messages = ap.ChatFormat().render(ap.make_signature("q -> a"), [], {"q": "hi"})
    prompt = messages_to_prompt(messages)
    assert prompt == messages_to_prompt(messages)
    assert prompt.endswith("<|assistant|>\n") and "[[q]]\nhi" in prompt
