"""The DataCrunch API's errors: 422 items naming the field, the value and the fix.

Two sources of 422: pydantic's schema errors, and the engine's `InputError`, rendered in this
API's names (`strength`, `refiner_ratio = 1 - high_noise_frac`, ...) from its field and value.
"""

from __future__ import annotations

import difflib
from typing import Any

import annotated_types

from sdxl.api.datacrunch.schema import GenerateRequest
from sdxl.api.datacrunch.tables import REST_NAMING
from sdxl.api.errors import ApiError
from sdxl.errors import InputError

FIELDS = tuple(GenerateRequest.model_fields)


class InvalidInput(ApiError):
    """A request that cannot run as given (422); `field` names the parameter at fault."""

    status = 422

    def __init__(self, message: str, field: str | None = None, kind: str = "invalid"):
        super().__init__(message)
        self.field = field
        self.kind = kind

    def body(self) -> dict:
        loc = ["body", self.field] if self.field else ["body"]
        return {
            "detail": [{"field": self.field, "msg": self.message, "type": self.kind, "loc": loc}]
        }


def engine_input_error(err: InputError) -> InvalidInput:
    """The engine's error in this API's names and values."""
    return InvalidInput(err.render(REST_NAMING), err.api_field(REST_NAMING))


# ---- pydantic errors -> messages ----


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def allowed_range(field: str) -> str:
    """The bounds of a numeric field in words, e.g. '1..500' or 'more than 0 and less than 1'."""
    lo = hi = None
    strict_lo = strict_hi = False
    for item in GenerateRequest.model_fields[field].metadata:
        if isinstance(item, annotated_types.Ge):
            lo = item.ge
        elif isinstance(item, annotated_types.Gt):
            lo, strict_lo = item.gt, True
        elif isinstance(item, annotated_types.Le):
            hi = item.le
        elif isinstance(item, annotated_types.Lt):
            hi, strict_hi = item.lt, True
    if strict_lo or strict_hi:
        return f"a value more than {lo:g} and less than {hi:g}"
    return f"a value from {lo:g} to {hi:g}"


_TYPE_WORDS = {
    "int": "an integer (no quotes, no decimal point)",
    "float": "a number",
    "bool": "true or false (JSON booleans, no quotes)",
    "string": "a string",
}


def _field_message(kind: str, field: str, error: dict) -> str:
    value = _shown(error.get("input"))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{field} is required; add it to the JSON body"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(field, FIELDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{field!r} is not a parameter of this API; {hint}remove it or fix its spelling"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{field}={value} is out of range; use {allowed_range(field)}"
    if kind == "literal_error":
        return f"{field}={value} is not supported; use one of {ctx.get('expected')}"
    if kind == "string_too_long":
        return f"{field} is too long; the limit is {ctx.get('max_length')} characters"
    for prefix, words in _TYPE_WORDS.items():
        if kind.startswith(prefix + "_"):
            return f"{field}={value} must be {words}"
    return f"{field}={value}: {error.get('msg')}"


def _body_message(kind: str, error: dict) -> str:
    example = '{"prompt": "A cat with a hat"}'
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({reason}); send a JSON object such as {example}"
    if kind == "missing":
        return f"the request has no body; send a JSON object such as {example}"
    return (
        "the body must be a JSON object of generation parameters with Content-Type: "
        f"application/json, such as {example}"
    )


def format_validation_errors(errors: list[dict]) -> list[dict]:
    """FastAPI's RequestValidationError.errors() as items naming the field, value and fix."""
    items = []
    for error in errors:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        kind = error.get("type", "invalid")
        field = loc[0] if loc and isinstance(loc[0], str) else None
        msg = _body_message(kind, error) if field is None else _field_message(kind, field, error)
        items.append({"field": field, "msg": msg, "type": kind, "loc": ["body", *loc]})
    return items
