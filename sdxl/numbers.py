"""What a piece of text means as a number: one grammar for request fields sent as strings and for
operator settings, so that no other spelling (unicode digits, "NaN", "1_000", control
characters) slips through a parser that happens to accept it."""

from __future__ import annotations

import math
import re

ASCII_BLANKS = " \t\n\r"  # trimmed; anything else around a number makes it not a number
MAX_CHARS = 400  # longer is no number any input takes (and int() refuses 4300+ digits)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number_from_text(text: str, integer: bool = False) -> int | float | None:
    """The number `text` spells in ASCII (sign, digits, point, exponent; an integer: sign and
    digits), after trimming ASCII blanks; None when it spells none or a float is not finite.
    "-0" is 0."""
    text = text.strip(ASCII_BLANKS)
    if len(text) > MAX_CHARS:
        return None
    if integer:
        return int(text) if _INTEGER.fullmatch(text) else None
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value + 0.0 if math.isfinite(value) else None  # + 0.0 turns -0.0 into 0.0
