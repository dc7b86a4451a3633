"""The DataCrunch API's errors: 422 items naming the field, the value and the fix (the messages
are the rules' own, `sdxl.inputs.rules`, in this API's names; `sdxl.http.errors` shapes them)."""

from __future__ import annotations

from sdxl.http.errors import problem_item
from sdxl.inputs.surface import Problem

EXAMPLE = '{"prompt": "A cat with a hat"}'


def format_validation_errors(errors: list[dict]) -> list[dict]:
    """FastAPI's own RequestValidationError (query and path parameters of any route) as items
    naming the parameter; request bodies are checked by the rules, never by FastAPI."""
    items = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        field = loc[-1] if len(loc) > 1 else None
        items.append({**problem_item(Problem(field, f"{field}: {error.get('msg')}")), "loc": loc})
    return items
