"""The DataCrunch API's error shape: 422 items naming the field, the value and the fix.

The messages are the engine's rules' (`sdxl.core.rules`), in this API's names (`strength`,
`refiner_ratio = 1 - high_noise_frac`, ...); this module only shapes them.
"""

from __future__ import annotations

from sdxl.api.datacrunch.fields import DATACRUNCH
from sdxl.api.errors import ApiError
from sdxl.core.surface import Problem
from sdxl.errors import UserError

EXAMPLE = '{"prompt": "A cat with a hat"}'


class InvalidInput(ApiError):
    """A request that cannot run as given (422): one item per problem."""

    status = 422

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems

    @property
    def field(self) -> str | None:
        return self.problems[0].field

    def body(self) -> dict:
        return {"detail": [item(p.field, p.message) for p in self.problems]}


def item(field: str | None, message: str, kind: str = "invalid") -> dict:
    loc = ["body", field] if field else ["body"]
    return {"field": field, "msg": message, "type": kind, "loc": loc}


def engine_error(err: UserError) -> InvalidInput:
    """An engine error (a rule broken when the job was prepared) in this API's names."""
    return InvalidInput([DATACRUNCH.problem(err)])


def body_error(why: str) -> InvalidInput:
    """A body that is not a JSON object of parameters."""
    return InvalidInput([Problem(None, f"{why}; send a JSON object such as {EXAMPLE}")])


def format_validation_errors(errors: list[dict]) -> list[dict]:
    """FastAPI's own RequestValidationError (query and path parameters of any route) as items
    naming the parameter; request bodies are checked by the rules, never by FastAPI."""
    items = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        field = loc[-1] if len(loc) > 1 else None
        items.append({**item(field, f"{field}: {error.get('msg')}"), "loc": loc})
    return items
