"""The API's error kinds, and clear messages for them: each names the value and the fix.

Two sources of 422 are translated here: pydantic's schema errors, and the engine's
`sdxl.errors.InputError`, whose messages use the Cog input names.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import annotated_types

from sdxl.rest.schema import GenerateRequest
from sdxl.rest.tables import COG_TO_REST_NAMES

FIELDS = tuple(GenerateRequest.model_fields)


class ApiError(Exception):
    """An error answered with `status` and `{"detail": message}`.

    (401 and 413 are answered by the middlewares in auth.py and limits.py, before the app.)
    """

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"detail": self.message}


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


class QueueFull(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


class GenerationFailed(ApiError):
    status = 500


class ClientDisconnected(ApiError):
    status = 499  # "client closed request" (nginx): nobody is left to read it


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds)))}


# ---- engine messages (Cog names) -> REST names ----

_HIGH_NOISE_VALUE = re.compile(r"\bhigh_noise_frac=([0-9.eE+-]+)")


def translate_engine_message(message: str) -> str:
    """The engine's message with REST names: high_noise_frac=x becomes refiner_ratio=1-x."""
    message = _HIGH_NOISE_VALUE.sub(lambda m: f"refiner_ratio={1 - float(m[1]):g}", message)
    message = message.replace("1 - high_noise_frac", "refiner_ratio")
    message = re.sub(r"\bhigh_noise_frac\b", "refiner_ratio", message)
    for cog, rest in COG_TO_REST_NAMES.items():
        # "image" is also an ordinary word: only rename it where it leads the message.
        pattern = rf"^{cog}\b" if cog == "image" else rf"\b{cog}\b"
        message = re.sub(pattern, rest, message)
    return message


def field_of(message: str) -> str | None:
    """The REST field a message is about: the one it starts with, else the first `name=`."""
    lead = re.match(r"\w+", message)
    if lead and lead[0] in FIELDS:
        return lead[0]
    for name in re.findall(r"\b(\w+)=", message):
        if name in FIELDS:
            return name
    return None


def engine_input_error(message: str) -> InvalidInput:
    text = translate_engine_message(message)
    return InvalidInput(text, field_of(text))


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
