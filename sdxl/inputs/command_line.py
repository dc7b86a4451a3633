"""Inputs given on a command line as `-i name=value` (`python -m sdxl predict`, `python -m sdxl
train`): the text of one input read as the value its kind says."""

from __future__ import annotations

from typing import Any


def typed_value(name: str, text: str, kind: str) -> Any:
    """`text` as an integer, a number or a boolean (true/false) where `kind` says so, else the
    text itself; a ValueError names the input and what was expected."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        raise ValueError(f"-i {name}={text!r}: expected a {kind}") from None
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"-i {name}={text!r}: expected true or false")
        return text.lower() == "true"
    return text
