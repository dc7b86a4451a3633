"""Request bodies every JSON API reads the same way: a JSON object, or a 4xx that says why."""

from __future__ import annotations

import json

from fastapi import Request as HttpRequest

from sdxl.http.errors import InvalidRequest
from sdxl.inputs.surface import Problem


async def json_object(http: HttpRequest, example: str, empty: str = "null") -> dict:
    """The body as a JSON object; `empty` is what an empty body stands for."""
    try:
        body = json.loads(await http.body() or empty.encode())
    except ValueError as err:
        raise _not_an_object(f"the body is not valid JSON ({err})", example) from None
    if body is None:
        raise _not_an_object("the request has no body", example)
    if not isinstance(body, dict):
        raise _not_an_object("the body must be a JSON object", example)
    return body


def _not_an_object(why: str, example: str) -> InvalidRequest:
    return InvalidRequest([Problem(None, f"{why}; send a JSON object such as {example}")])
