"""HTTP errors, independent of the shape each API writes them in (`sdxl.http.shapes`)."""

from __future__ import annotations

from sdxl.http.server_settings import DISK_FULL_RETRY_AFTER_S, STORE_RETRY_AFTER_S
from sdxl.inputs.surface import Problem
from sdxl.store.errors import StoreDiskFull, StoreUnavailable


class ApiError(Exception):
    """An error answered with `status`; `body()` is the default shape (`{"detail": ...}`)."""

    status = 500
    retry = True  # False: retrying cannot help, or the work may have run (OpenAI's clients read it)
    own_shape = False  # True: `body()` is the answer whatever API the path belongs to

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"detail": self.message}


class InvalidRequest(ApiError):
    """A request that cannot run as given: every problem, in the API's field names."""

    status = 422

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems

    @property
    def field(self) -> str | None:
        return self.problems[0].field

    def body(self) -> dict:  # DataCrunch's items
        return {"detail": [problem_item(p) for p in self.problems]}


def problem_item(problem: Problem, kind: str = "invalid") -> dict:
    loc = ["body", problem.field] if problem.field else ["body"]
    return {"field": problem.field, "msg": problem.message, "type": kind, "loc": loc}


class Unauthenticated(ApiError):
    status = 401
    retry = False

    def body(self) -> dict:  # Replicate's shape, which the other paths have always had
        return {"title": "Unauthenticated", "detail": self.message, "status": 401}


class NotFound(ApiError):
    status = 404
    retry = False


class BodyTooLarge(ApiError):
    status = 413
    retry = False


class QueueFull(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


class GenerationFailed(ApiError):
    status = 500
    retry = False  # the job ran: a retry would run it again


class GenerationTimeout(ApiError):
    status = 504  # the job ran past SDXL_MAX_SECONDS
    retry = False


class ClientDisconnected(ApiError):
    status = 499  # "client closed request" (nginx): nobody is left to read it
    retry = False


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds)))}


def store_unavailable(exc: StoreUnavailable) -> Unavailable:
    """The prediction store's database is away (or its disk full): a 503 to retry, on the
    routes that need it; the others keep working."""
    wait = DISK_FULL_RETRY_AFTER_S if isinstance(exc, StoreDiskFull) else STORE_RETRY_AFTER_S
    return Unavailable(f"{exc.message}; retry later", headers=retry_after(wait))
