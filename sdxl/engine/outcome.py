"""How a job ended, decided once: one table from the exception that ended it to its status, its
failure kind (metrics), the code the synchronous APIs answer with, whether sending it again can
help, and the message its caller reads.

Every API reads its answer from here: the engine sets the job's status with it, the metrics
count its kind, the Replicate API stores its status and message, the synchronous APIs
(DataCrunch, OpenAI, AUTOMATIC1111) answer its HTTP code in their own shapes, and the Cog
predictor raises its message.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdxl.engine.jobs import (
    DeadlineExceeded,
    EngineBroken,
    JobCanceled,
    JobStatus,
    OutOfMemory,
    ServerStopping,
)
from sdxl.errors import UserError


@dataclass(frozen=True)
class Rule:
    """One row of the table: what a job that ended with `error` (or a subclass) is."""

    error: type[BaseException]
    status: JobStatus
    kind: str  # sdxl_job_failures_total{kind}
    http: int  # the synchronous APIs' answer (OpenAI writes every 4xx of a request as 400)
    retry: bool  # whether sending the same request again can help
    plain: bool  # whether the error's own text is the message (else the internal line below)


FAILED, CANCELED = JobStatus.FAILED, JobStatus.CANCELED
# First match wins, so subclasses come before the classes they derive from.
RULES: tuple[Rule, ...] = (
    # It never ran: another replica, or this one once back, takes it if it is sent again.
    Rule(ServerStopping, CANCELED, "stopping", 503, True, True),
    Rule(JobCanceled, CANCELED, "canceled", 499, False, True),
    Rule(DeadlineExceeded, FAILED, "deadline", 504, False, True),
    Rule(OutOfMemory, FAILED, "out_of_memory", 422, False, True),  # the message says what to lower
    Rule(UserError, FAILED, "input", 422, False, True),  # a rule of the model
    Rule(EngineBroken, FAILED, "broken", 503, False, True),  # until a restart
    Rule(BaseException, FAILED, "internal", 500, False, False),
)
FAILURE_KINDS = tuple(rule.kind for rule in RULES)
INTERNAL = (
    "generation failed ({kind}, job {job}); the server is still running: retry, or change the "
    "inputs"
)


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    kind: str | None  # None: it succeeded
    http: int
    retry: bool
    message: str | None  # None: it succeeded

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


SUCCEEDED = Outcome(JobStatus.SUCCEEDED, None, 200, False, None)


def rule_of(error: BaseException) -> Rule:
    return next(rule for rule in RULES if isinstance(error, rule.error))


def outcome_of(error: BaseException | None, job_id: str = "") -> Outcome:
    """What a job that ended with `error` (None: it succeeded) is, for every API."""
    if error is None:
        return SUCCEEDED
    rule = rule_of(error)
    text = str(error) if rule.plain else INTERNAL.format(kind=type(error).__name__, job=job_id)
    return Outcome(rule.status, rule.kind, rule.http, rule.retry, text)
