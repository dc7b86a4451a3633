"""The one grammar for numbers sent as text (request fields where an API takes strings, and
operator settings): JSON's number grammar in ASCII after trimming ASCII blanks, nothing else."""

from __future__ import annotations

import pytest

from sdxl.numbers import number_from_text
from sdxl.settings import SettingsError, env_number

NOT_NUMBERS = [
    "",
    "   ",
    "\x1f0",  # a control character before the digits (schemathesis found it on main)
    "0\x00",
    "\u00a05",  # a no-break space is not an ASCII blank
    "٣",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
    "１２",  # fullwidth digits
    "NaN",
    "nan",
    "Infinity",
    "-inf",
    "1e999",  # overflows to infinity
    "0x10",
    "1_000",
    "1,5",
    "++1",
    "1e",
    ".",
    "5 5",
    "1" * 5000,  # more digits than int() converts
]


@pytest.mark.parametrize("text", NOT_NUMBERS)
@pytest.mark.parametrize("integer", [False, True])
def test_what_is_not_a_number(text, integer):
    assert number_from_text(text, integer) is None


@pytest.mark.parametrize(
    ("text", "integer", "value"),
    [
        (" 5\t\n", True, 5),
        ("-0", True, 0),
        ("+7", True, 7),
        ("-0", False, 0.0),
        ("0.8", False, 0.8),
        (".5", False, 0.5),
        ("5.", False, 5.0),
        ("1e3", False, 1000.0),
        ("-2.5E-1", False, -0.25),
    ],
)
def test_what_is(text, integer, value):
    found = number_from_text(text, integer)
    assert found == value and type(found) is type(value)
    assert str(found) != "-0.0"


def test_an_integer_field_refuses_a_fraction():
    assert number_from_text("2.5", integer=True) is None
    assert number_from_text("1e3", integer=True) is None


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "٣"])
@pytest.mark.parametrize("parse", [float, int])
def test_operator_settings_refuse_what_is_not_a_finite_number(text, parse):
    env = {"SDXL_MAX_SECONDS": text}
    with pytest.raises(SettingsError, match=r"SDXL_MAX_SECONDS=.* is not valid; use a"):
        env_number(env, "SDXL_MAX_SECONDS", parse, 0, None)
