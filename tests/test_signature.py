import enum
from typing import Literal

import pydantic
import pytest

import apprentice as ap
from apprentice.signature import SignatureError


class GenerateAnswer(ap.Signature):
    """Answer questions with short factoid answers."""

    context: list[str] = ap.InputField(desc="may contain relevant facts")
    question: str = ap.InputField()
    answer: str = ap.OutputField(desc="often between 1 and 5 words")


def test_class_form_collects_fields_in_order_with_docstring_as_instructions():
    assert list(GenerateAnswer.input_fields) == ["context", "question"]
    assert list(GenerateAnswer.output_fields) == ["answer"]
    assert GenerateAnswer.instructions == "Answer questions with short factoid answers."
    assert GenerateAnswer.fields["context"].annotation == list[str]
    assert GenerateAnswer.fields["answer"].desc == "often between 1 and 5 words"
    assert GenerateAnswer.signature_string() == "context: list[str], question -> answer"


def test_string_form_with_types():
    sig = ap.make_signature("question, k: int -> answer: int, tags: list[str], ok: bool")
    assert list(sig.input_fields) == ["question", "k"]
    assert sig.fields["k"].annotation is int
    assert sig.fields["tags"].annotation == list[str]
    assert sig.fields["ok"].annotation is bool
    lit = ap.make_signature("text -> label: Literal['spam', 'ham']")
    assert lit.fields["label"].annotation == Literal["spam", "ham"]
    nested = ap.make_signature("a: dict[str, list[int]] -> b: Optional[float]")
    assert nested.fields["a"].annotation == dict[str, list[int]]


def test_string_form_default_instructions_name_the_fields():
    sig = ap.make_signature("question -> answer")
    assert "`question`" in sig.instructions and "`answer`" in sig.instructions


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("question answer", "exactly one '->'"),
        ("a -> b -> c", "exactly one '->'"),
        ("question ->", "no output field"),
        ("a, , b -> c", "empty input field"),
        ("a b -> c", "'a b'"),
        ("class -> c", "'class'"),
        ("a -> a", "names field 'a' twice"),
        ("a -> b: Foo", "unknown type 'Foo'"),
        ("a -> b: list[", "not a valid type expression"),
        ("a -> b: __import__('os')", "not a supported type expression"),
    ],
)
def test_malformed_signature_strings_name_the_bad_value(spec, fragment):
    with pytest.raises(SignatureError) as err:
        ap.make_signature(spec)
    assert fragment in str(err.value)


def test_custom_types_are_allowed_when_named():
    class Answer(pydantic.BaseModel):
        text: str

    sig = ap.make_signature("q -> a: Answer", custom_types={"Answer": Answer})
    assert sig.fields["a"].annotation is Answer


def test_class_field_without_marker_is_rejected():
    with pytest.raises(SignatureError, match="has no InputField"):

        class Bad(ap.Signature):
            question: str


def test_signatures_are_immutable_values():
    a = ap.make_signature("question -> answer")
    b = ap.make_signature("question -> answer")
    assert a == b and hash(a) == hash(b)
    assert a != ap.make_signature("question -> reply")
    with pytest.raises(AttributeError, match="immutable"):
        a.instructions_override = "x"


def test_derivation_helpers_return_new_signatures():
    base = ap.make_signature("question -> answer")
    cot = base.prepend("reasoning", ap.OutputField(desc="think"))
    assert list(cot.output_fields) == ["reasoning", "answer"]
    assert list(base.output_fields) == ["answer"]  # unchanged
    more = base.append("context", ap.InputField(), list[str])
    assert list(more.input_fields) == ["question", "context"]
    assert more.fields["context"].annotation == list[str]
    told = base.with_instructions("Be terse.")
    assert told.instructions == "Be terse." and base.instructions != "Be terse."
    assert list(cot.delete("reasoning").fields) == ["question", "answer"]
    with pytest.raises(SignatureError, match="already has a field 'answer'"):
        base.append("answer", ap.OutputField())
    with pytest.raises(SignatureError, match="no field 'nope'"):
        base.delete("nope")


def test_enum_and_pydantic_fields_round_trip_through_to_dict():
    class Color(enum.Enum):
        RED = "red"
        BLUE = "blue"

    class Sig(ap.Signature):
        text: str = ap.InputField()
        color: Color = ap.OutputField()

    data = Sig.to_dict()
    assert data["fields"][1]["type"] == "Color"
    rebuilt = ap.Signature.from_dict(data, custom_types={"Color": Color})
    assert rebuilt.fields["color"].annotation is Color
    assert rebuilt == Sig.with_instructions(Sig._instructions)


def test_ensure_signature_rejects_other_things():
    with pytest.raises(SignatureError, match="42"):
        ap.ensure_signature(42)


@pytest.mark.parametrize("name", ["labels", "items", "keys", "inputs", "config", "demos", "lm"])
def test_field_names_that_collide_with_the_api_are_refused(name):
    with pytest.raises(SignatureError, match=rf"field name '{name}'.* is a .* rename it"):
        ap.make_signature(f"question -> {name}")
    with pytest.raises(SignatureError, match=rf"'{name}'"):
        ap.make_signature(f"{name} -> answer")
    with pytest.raises(SignatureError, match=rf"'{name}'"):
        type(
            "Bad",
            (ap.Signature,),
            {"__doc__": "Doc.", "__annotations__": {name: str}, name: ap.OutputField()},
        )


def test_signature_called_with_a_string_and_instructions_builds_a_class():
    built = ap.Signature("question -> answer: int", "Answer with a number.")
    assert built == ap.make_signature("question -> answer: int", "Answer with a number.")
    assert (
        built.instructions == "Answer with a number."
        and built.output_fields["answer"].annotation is int
    )
    assert ap.Signature("question -> answer").instructions.startswith("Given the fields")
    with pytest.raises(TypeError, match=r"not instantiated; pass the class itself \(ap.Predict\("):
        built()
    with pytest.raises(TypeError, match="write a class with InputField"):
        ap.Signature({"question": ap.InputField()})
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['color'\]"):
        ap.Signature("a -> b", color="red")
