"""A training's `input` on the Replicate API: the trainer's inputs (`sdxl.train.options`) under
their own names, checked when the training is created so that a wrong value is a 422 now, not
a failed training later. Numbers may come as strings, as predictions' do; null means "not
given". A file input (`input_images`, `resume_from_checkpoint`) is one of this server's
/v1/files URLs (the Python client uploads a local file there), a data URI, or an http(s) URL
fetched under the usual rules when the training is prepared.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import re
from typing import Any

from sdxl.config import InputSpec
from sdxl.errors import UserError
from sdxl.inputs.rules import check_choice, check_range
from sdxl.inputs.surface import InvalidInputs, Problem
from sdxl.numbers import number_from_text
from sdxl.train.options import TRAIN_INPUTS, TrainRequest, check_train_request

FILE_FORMS = ("http://", "https://", "data:")
_DATA_URI = re.compile(r"data:[\w.+/-]*((?:;[\w.+=-]+)*),", re.IGNORECASE)


def data_uri_file(text: str, name: str) -> bytes:
    """The bytes of a base64 data URI of any type (an archive: data:application/zip;...)."""
    match = _DATA_URI.match(text)
    if match is None or "base64" not in match.group(1).lower().split(";"):
        raise ValueError(f"{name} is not a base64 data URI, as in data:application/zip;base64,...")
    try:
        return base64.b64decode(text[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: the data URI's base64 is not valid") from None


def check_training_input(raw: Any) -> dict[str, Any]:
    """The input as checked (values typed, nulls dropped); InvalidInputs names every field at
    fault as `input.<name>`."""
    if not isinstance(raw, dict):
        raise InvalidInputs([Problem("input", "must be a JSON object of the trainer's inputs")])
    given: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in raw.items():
        spec = TRAIN_INPUTS.get(name) if isinstance(name, str) else None
        if spec is None:
            problems.append(_unknown(str(name)))
        elif value is not None:
            try:
                given[name] = _value(name, spec, value)
            except UserError as err:
                problems.append(Problem(f"input.{name}", str(err)))
    if "input_images" not in given and not any(p.field == "input.input_images" for p in problems):
        problems.append(Problem("input.input_images", "input_images is required: a .zip or .tar"))
    if not problems:
        try:  # the rules that join inputs (the token in the prefix, multiples of 8)
            check_train_request(TrainRequest(**{**given, "input_images": "-"}))
        except UserError as err:
            problems.append(Problem(f"input.{err.field or 'input'}", str(err)))
    if problems:
        raise InvalidInputs(problems)
    return given


def _value(name: str, spec: InputSpec, value: Any) -> Any:
    kind = spec.kind
    if isinstance(value, str) and kind in ("integer", "number"):
        number = number_from_text(value, integer=kind == "integer")
        value = value if number is None else number
    if kind == "file":
        if not (isinstance(value, str) and value.strip().lower().startswith(FILE_FORMS)):
            raise UserError(
                f"{name} must be a URL: upload the file to /v1/files (the Python client does "
                "it for a local file), or give an http(s) URL or a data URI"
            )
        return value.strip()
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if not ok or (kind == "number" and not math.isfinite(value)):
        raise UserError(f"{name} must be {'an' if kind == 'integer' else 'a'} {kind}")
    if spec.choices is not None:
        check_choice(name, value, spec.choices)
    elif kind in ("integer", "number"):
        check_range(name, value, spec.ge, spec.le)
    if kind == "string" and spec.max_length is not None and len(value) > spec.max_length:
        raise UserError(f"{name} has {len(value)} characters; the limit is {spec.max_length}")
    return value + 0.0 if isinstance(value, float) else value


def _unknown(name: str) -> Problem:
    close = difflib.get_close_matches(name, list(TRAIN_INPUTS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = name if len(name) <= 60 else name[:57] + "..."
    return Problem(f"input.{shown}", f"{shown!r} is not an input of the trainer; {hint}remove it")
