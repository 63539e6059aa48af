"""Many labels: a Literal of 500 values is listed once in the prompt, and an unknown value
gets a short error that names it and the closest labels (it was 17k characters)."""

from __future__ import annotations

from typing import Literal

import pytest

import apprentice as ap
from apprentice.formats.values import parse_value

LABELS = tuple(
    f"{device}: {problem}"
    for device in ("oven", "kettle", "phone", "laptop", "router")
    for problem in [f"fault {i:03d}" for i in range(100)]
)


class Label(ap.Signature):
    """Label the message."""

    text: str = ap.InputField()
    label: Literal[LABELS] = ap.OutputField()


class Labels(ap.Signature):
    """Every label that applies."""

    text: str = ap.InputField()
    tags: list[Literal[LABELS]] = ap.OutputField()


@pytest.mark.parametrize("fmt", [ap.ChatFormat(), ap.JSONFormat()], ids=["chat", "json"])
def test_each_label_is_written_once_in_the_prompt(fmt):
    system = fmt.render(Label, [], {"text": "x"})[0]["content"]
    assert all(system.count(label) == 1 for label in LABELS[:50])
    assert "Literal[" not in system
    assert "`label` (str) [one of: oven: fault 000; oven: fault 001;" in system
    # The listing itself is the cost: ~16 characters a label, no more.
    assert len(system) < len("; ".join(LABELS)) + 600


def test_a_list_of_labels_is_listed_once_too():
    system = ap.ChatFormat().render(Labels, [], {"text": "x"})[0]["content"]
    assert system.count("kettle: fault 042") == 1 and "Literal[" not in system


def test_an_unknown_label_gets_a_short_error_naming_it_and_the_closest():
    with pytest.raises(ap.ParseError) as info:
        ap.ChatFormat().parse(Label, "[[label]]\nkettle: fault 42")
    message = str(info.value)
    assert len(message) < 400, message
    assert "'kettle: fault 42' is not one of the 500 allowed values" in message
    assert "'kettle: fault 042'" in message.split("closest:")[1]

    with pytest.raises(ap.ParseError) as info:
        ap.JSONFormat().parse(Labels, '{"tags": ["oven: fault 001", "ovne: fault 001"]}')
    message = str(info.value)
    assert len(message) < 400, message
    assert "'ovne: fault 001' is not one of the 500" in message and "'oven: fault 001'" in message


def test_a_few_labels_are_still_listed_in_full_and_matching_is_unchanged():
    with pytest.raises(ValueError, match=r"'maybe' is not one of \['yes', 'no'\]"):
        parse_value("maybe", Literal["yes", "no"])
    assert parse_value(" 'Kettle: Fault 007' ", Literal[LABELS]) == "kettle: fault 007"


def test_the_signature_still_saves_and_reads_its_literal_type():
    restored = ap.make_signature("text -> label: Literal['a', 'b']")
    assert restored.to_dict()["fields"][1]["type"] == "Literal['a', 'b']"
    assert restored.fields["label"].type_str() == "str"
