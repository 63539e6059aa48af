"""parse_value: numbers with thousands separators, and what must not pass for one."""

import pytest

import apprentice as ap
from apprentice.formats.values import parse_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,234", 1234), ("-12,345,678", -12345678), ("1234", 1234), ("'7'", 7)],
)
def test_ints_accept_thousands_separators_in_groups_of_three(text, expected):
    assert parse_value(text, int) == expected


@pytest.mark.parametrize("text", ["1,2,3", "12,34", "1,2345", ",123", "123,", "1,,234"])
def test_commas_that_are_not_thousands_separators_are_refused(text):
    with pytest.raises(ValueError, match="is not a valid int"):
        parse_value(text, int)


def test_floats_keep_separators_only_before_the_point():
    assert parse_value("1,234.5", float) == 1234.5
    with pytest.raises(ValueError, match="is not a valid float"):
        parse_value("1,2.5", float)


def test_a_list_for_an_int_field_is_a_parse_error_naming_the_field():
    sig = ap.make_signature("q -> answer: int")
    with pytest.raises(ap.ParseError) as err:
        ap.ChatFormat().parse(sig, "[[answer]]\n1,2,3")
    assert "'1,2,3' is not a valid int" in err.value.invalid["answer"]
