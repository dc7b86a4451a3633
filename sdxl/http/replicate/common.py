"""What every Replicate route shares: errors in Replicate's shape, JSON bodies, cursors, the
origin of the URLs an answer holds, and whose rows the caller sees."""

from __future__ import annotations

import base64
import json
import re

from fastapi import Request as HttpRequest

from sdxl.http.auth import caller
from sdxl.http.errors import ApiError
from sdxl.http.settings import Settings
from sdxl.store.tables import ANY

DEFAULT_WAIT_S = 60.0
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?:$|[,;\s])")


class ReplicateError(ApiError):
    """An error in Replicate's shape: {"title", "detail", "status"}."""

    own_shape = True  # also on paths OpenAI's API shares (/v1/models)

    def __init__(self, status: int, title: str, detail: str, **extra):
        super().__init__(detail, headers=extra.pop("headers", None))
        self.status, self.title, self.extra = status, title, extra

    def body(self) -> dict:
        return {"title": self.title, "detail": self.message, "status": self.status, **self.extra}


def not_found(what: str) -> ReplicateError:
    return ReplicateError(404, "Not found", f"{what} was not found on this server")


def prefer_wait(header: str | None) -> float | None:
    """Seconds to hold the answer for `Prefer: wait` or `Prefer: wait=N` (at most 60)."""
    if not header:
        return None
    match = _PREFER_WAIT.search(header.lower())
    if match is None:
        return None
    seconds = float(match.group(1)) if match.group(1) else DEFAULT_WAIT_S
    return max(1.0, min(seconds, DEFAULT_WAIT_S))


async def json_body(http: HttpRequest) -> dict:
    try:
        body = json.loads(await http.body() or b"{}")
    except ValueError as err:
        raise ReplicateError(400, "Invalid JSON", f"the body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ReplicateError(400, "Invalid JSON", "the body must be a JSON object")
    return body


def origin(http: HttpRequest, settings: Settings) -> str:
    """Where the answer's URLs point: SDXL_PUBLIC_URL, or the request's own host."""
    return settings.public_url or str(http.base_url).rstrip("/")


def whose(http: HttpRequest):
    """Whose rows the caller sees: its tenant's (the admin key: all). Another tenant's answer
    404, exactly as an id that does not exist."""
    found = caller(http)
    return ANY if found.admin else found.tenant


def json_body_doc(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def encode_cursor(number: int) -> str:
    return base64.urlsafe_b64encode(str(number).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        detail = "the cursor is not one this server gave"
        raise ReplicateError(400, "Invalid cursor", detail) from None
