"""How a job ended, decided once: one table from the exception that ended it to its status, its
failure kind, whether sending it again can help, and the message its caller reads. Nothing
here is HTTP's.

Every API reads its answer from here: the engine sets the job's status with it, the metrics
count its kind (the kinds are label values: keep their names), the Replicate API stores its
status and message, the synchronous APIs (DataCrunch, OpenAI, AUTOMATIC1111) answer each kind
with their own code and shape (`sdxl.http.outcomes`), and the Cog predictor raises its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    kind: str  # sdxl_job_failures_total{kind}; each API answers it with its own code
    retry: bool  # whether sending the same request again can help
    plain: bool  # whether the error's own text is the message (else the internal line below)


FAILED, CANCELED = JobStatus.FAILED, JobStatus.CANCELED
# First match wins, so subclasses come before the classes they derive from.
RULES: tuple[Rule, ...] = (
    # It never ran: another replica, or this one once back, takes it if it is sent again.
    Rule(ServerStopping, CANCELED, "stopping", True, True),
    Rule(JobCanceled, CANCELED, "canceled", False, True),
    Rule(DeadlineExceeded, FAILED, "deadline", False, True),
    Rule(OutOfMemory, FAILED, "out_of_memory", False, True),  # the message says what to lower
    Rule(UserError, FAILED, "input", False, True),  # a rule of the model
    Rule(EngineBroken, FAILED, "broken", False, True),  # until a restart
    Rule(BaseException, FAILED, "internal", False, False),
)
FAILURE_KINDS = tuple(rule.kind for rule in RULES)
INTERNAL = (
    "{what} failed ({kind}, job {job}); the server is still running: retry, or change the inputs"
)


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    kind: str | None  # None: it succeeded
    retry: bool
    message: str | None  # None: it succeeded
    # A cancelled job's images decoded before it stopped, when there are any (a later change
    # fills it, for AUTOMATIC1111's interrupt); None today.
    partial: Any = None

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


SUCCEEDED = Outcome(JobStatus.SUCCEEDED, None, False, None)


def rule_of(error: BaseException) -> Rule:
    return next(rule for rule in RULES if isinstance(error, rule.error))


def outcome_of(error: BaseException | None, job_id: str = "", what: str = "generation") -> Outcome:
    """What a job that ended with `error` (None: it succeeded) is, for every API (`what`: the
    job's kind, as an internal failure's message names it)."""
    if error is None:
        return SUCCEEDED
    rule = rule_of(error)
    internal = INTERNAL.format(what=what, kind=type(error).__name__, job=job_id)
    text = str(error) if rule.plain else internal
    return Outcome(rule.status, rule.kind, rule.retry, text)
