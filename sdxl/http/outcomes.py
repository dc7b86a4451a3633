"""How the synchronous APIs (DataCrunch, OpenAI's Images, AUTOMATIC1111's) answer a job that did
not succeed: one table from the engine's outcome kind (`sdxl.engine.outcome`, which knows
nothing of HTTP) to the error they raise, and so to its code; each API writes that error in its
own shape (`sdxl.http.shapes`: OpenAI answers every 4xx of a request as 400).

The Replicate API answers no code for a job's end: it stores the outcome's status and message.
"""

from __future__ import annotations

from sdxl.engine import Job
from sdxl.engine.outcome import FAILURE_KINDS
from sdxl.http.errors import (
    ApiError,
    ClientDisconnected,
    GenerationFailed,
    GenerationTimeout,
    InvalidRequest,
    Unavailable,
    retry_after,
)
from sdxl.http.server_settings import DRAINING_RETRY_AFTER_S
from sdxl.inputs.surface import Surface

# Each outcome kind's error (its class's status is the code the synchronous APIs answer).
ERRORS: dict[str, type[ApiError]] = {
    "stopping": Unavailable,  # it never ran: the caller should send it again (Retry-After)
    "canceled": ClientDisconnected,  # 499: nobody is left to read it
    "deadline": GenerationTimeout,  # 504: it ran past SDXL_MAX_SECONDS
    "out_of_memory": InvalidRequest,  # 422: the request's, the message says what to lower
    "input": InvalidRequest,  # 422: a rule of the model
    "broken": Unavailable,  # 503 until a restart
    "internal": GenerationFailed,  # 500, naming the error's class, never its text
}
if set(ERRORS) != set(FAILURE_KINDS):
    raise RuntimeError(f"outcome kinds without an error: {set(FAILURE_KINDS) - set(ERRORS)}")


def stopping_headers() -> dict[str, str]:
    """A draining server's answer: retry soon, on another connection (another replica)."""
    return {**retry_after(DRAINING_RETRY_AFTER_S), "Connection": "close"}


def api_error(job: Job, surface: Surface) -> ApiError:
    """The error a synchronous API raises for `job`, which did not succeed, in `surface`'s
    field names."""
    ended = job.outcome
    error = ERRORS[ended.kind]
    if error is InvalidRequest:
        return InvalidRequest([surface.problem(job.error)])
    if ended.kind == "stopping":
        return Unavailable(ended.message, headers=stopping_headers())
    return error(ended.message)
