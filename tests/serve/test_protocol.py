"""The request bodies as the server reads them: every malformed value is a 400, never a 500."""

from __future__ import annotations

import json

import pytest

from apprentice.serve.protocol import (
    MAX_JSON_DEPTH,
    HTTPError,
    chat_messages,
    json_object,
    sampling_options,
)


def refused(function, *args, **kwargs) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        function(*args, **kwargs)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "\\ud800x", "messages": []}',  # a lone surrogate, escaped
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        b'{"lora_name": "\\ud800x", "lora_path": "a"}',
        b'{"\\ud800": 1}',  # in a key
    ],
)
def test_lone_surrogates_are_refused_anywhere_in_the_body(body):
    assert "surrogate" in refused(json_object, body).message


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
def test_deeply_nested_json_is_refused(depth):
    body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    assert "nested" in refused(json_object, body).message
    nested_objects = b'{"a": ' * depth + b"1" + b"}" * depth
    assert "nested" in refused(json_object, nested_objects).message


def test_nesting_up_to_the_limit_is_read():
    depth = MAX_JSON_DEPTH - 1  # the body object is one level
    body = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    assert json_object(body) == json.loads(body)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_refused(constant):
    assert (
        "not a finite number" in refused(json_object, b'{"temperature": ' + constant + b"}").message
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("seed", 2**70),
        ("seed", -(2**64)),
        ("n", 2**70),
        ("temperature", 10**400),  # a Python int too large for a float
        ("temperature", 1e308 * 10),  # inf once parsed by json.loads
    ],
)
def test_out_of_range_numbers_are_refused(option, value):
    error = refused(sampling_options, {option: value}, chat=True)
    assert error.param == option


def test_seeds_take_the_64_bit_range():
    for seed in (0, 2**63 - 1, -(2**63)):
        assert sampling_options({"seed": seed}, chat=True)["seed"] == seed


def test_content_that_cannot_be_shown_is_refused_without_a_500():
    deep: list = []
    for _ in range(3000):  # built in Python: repr() of it would overflow the stack
        deep = [deep]
    error = refused(chat_messages, [{"role": "user", "content": deep}])
    assert "content must be a string" in error.message
