"""What every Replicate route shares: errors in Replicate's shape, JSON bodies, cursors, the
origin of the URLs an answer holds, and whose rows the caller sees."""

from __future__ import annotations

import base64
import re

from fastapi import Request as HttpRequest

from sdxl.http.auth import caller
from sdxl.http.bodies import BadJson, parse_json
from sdxl.http.errors import ApiError, retry_after
from sdxl.http.server_settings import DRAINING_RETRY_AFTER_S, Settings
from sdxl.http.service import ServerStatus, Service
from sdxl.store.tables import ANY

DEFAULT_WAIT_S = 60.0
CANCEL_WAIT_S = 2.0  # a cancel answers once the job has stopped (its next step), or after this
MAX_CURSOR = 1 << 63  # a row's number is a signed 64-bit integer in every store
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
        body = parse_json(await http.body() or b"{}")
    except BadJson as err:
        raise ReplicateError(400, "Invalid JSON", str(err)) from None
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
        number = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        number = -1
    if not 0 <= number < MAX_CURSOR:
        detail = "the cursor is not one this server gave"
        raise ReplicateError(400, "Invalid cursor", detail)
    return number


def invalid(err) -> ReplicateError:
    """Replicate's 422 for `err` (sdxl.inputs.surface.InvalidInputs): each field at fault."""
    lines = "".join(f"- {p.field}: {p.message}\n" for p in err.problems)
    fields = [{"field": p.field, "description": p.message} for p in err.problems]
    return ReplicateError(422, "Input validation failed", lines, invalid_fields=fields)


def page_of(rows, http: HttpRequest, settings: Settings, path: str, render) -> dict:
    """One page of `rows` (predictions or trainings: `.page(before, size, tenant)`), newest
    first, as Replicate lists them (`?cursor=` for the next)."""
    cursor = http.query_params.get("cursor")
    found = rows.page(decode_cursor(cursor), settings.page_size + 1, whose(http))
    page, more = found[: settings.page_size], len(found) > settings.page_size
    base = origin(http, settings)
    after = encode_cursor(page[-1]["number"]) if more else None
    return {
        "previous": None,
        "next": f"{base}{path}?cursor={after}" if after else None,
        "results": [render(row, base) for row in page],
    }


def accepting(service: Service, what: str) -> None:
    """503 for a create while the server stops (`what`: "predictions", "trainings") or is out
    of order."""
    if service.status == ServerStatus.DRAINING:
        raise ReplicateError(
            503,
            "Service unavailable",
            f"the server is shutting down and takes no new {what}; create it again",
            headers=retry_after(DRAINING_RETRY_AFTER_S),
        )
    if service.status == ServerStatus.FAILED:
        raise ReplicateError(503, "Service unavailable", str(service.reason))
