"""The chat format against text real models write: markdown headings, quoted markers,
fences, long runs of whitespace. Property-based (hypothesis): every generated reply
either parses back to exactly what was rendered, or fails with a ParseError."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apprentice as ap

SIG = ap.make_signature("question -> reasoning, answer")
FMT = ap.ChatFormat()

# Lines a model writes in its reasoning: markdown of every kind, and marker-like lines,
# including the other field's exact marker (a model quoting the format).
_LINES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40),
    st.sampled_from(
        [
            "### Summary",
            "### answer",
            "## answer:",
            "# reasoning",
            "**Answer:** 42",
            "[[answer]]",
            "[[ answer ]]",
            "[[question]]",
            "[[reasoning]] and more",
            "```python",
            "```",
            "- item",
            "> quote",
            "---",
            "",
            "   ",
        ]
    ),
)


def _value(exclude: str):
    """A field value: markdown-ish lines, never a marker line of its own field."""
    own = {f"[[{exclude}]]", f"[[ {exclude} ]]"}
    lines = st.lists(_LINES.filter(lambda line: line.strip() not in own), max_size=8)
    return lines.map(lambda ls: "\n".join(ls).strip()).filter(bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(reasoning=_value("reasoning"), answer=_value("answer"))
def test_rendered_outputs_parse_back_exactly(reasoning, answer):
    text = FMT.render_outputs(SIG, {"reasoning": reasoning, "answer": answer})
    assert FMT.parse(SIG, text) == {"reasoning": reasoning, "answer": answer}


@settings(max_examples=300, deadline=None)
@given(noise=st.lists(_LINES, max_size=12).map("\n".join))
def test_any_reply_parses_or_raises_a_parse_error(noise):
    try:
        values = FMT.parse(SIG, noise)
    except ap.ParseError:
        return
    assert set(values) == {"reasoning", "answer"}


def test_a_markdown_heading_no_longer_cuts_the_reasoning():
    reasoning = "### Summary\nThe ticket is about a refund.\n### answer\nquoted, not real"
    text = FMT.render_outputs(SIG, {"reasoning": reasoning, "answer": "billing"})
    assert FMT.parse(SIG, text) == {"reasoning": reasoning, "answer": "billing"}
    quoting = (
        "[[reasoning]]\nI will write [[answer]] then:\n[[answer]]\nnot this\n\n[[answer]]\nbilling"
    )
    assert FMT.parse(SIG, quoting)["answer"] == "billing"


LIST_SIG = ap.make_signature("question -> tags: list[str]")
_MEGABYTE = [
    "[[answer]]\n" + " " * 1_000_000,
    "\n" * 1_000_000,
    "[[" * 300_000,
    "[[ " + " " * 1_000_000 + "answer",
    " \t" * 500_000 + "\n[[answer]]\nx",
    "```json\n" + " " * 1_000_000,
    "```" + "\n" * 1_000_000 + "``",
    "[[tags]]\n```python" + " " * 1_000_000,
    "{" * 1_000_000,
    '{"answer": ' + "[" * 100_000 + "]" * 100_000 + "}",
]


@pytest.mark.parametrize("reply", _MEGABYTE, ids=range(len(_MEGABYTE)))
@pytest.mark.parametrize(
    ("fmt", "sig"),
    [(FMT, SIG), (FMT, LIST_SIG), (ap.JSONFormat(), SIG), (ap.JSONFormat(), LIST_SIG)],
    ids=["chat", "chat-list", "json", "json-list"],
)
def test_a_megabyte_reply_parses_in_well_under_a_second(fmt, sig, reply):
    start = time.process_time()  # CPU time: not inflated by other work on the box
    with contextlib.suppress(ap.ParseError):
        fmt.parse(sig, reply)
    assert time.process_time() - start < 1.0
