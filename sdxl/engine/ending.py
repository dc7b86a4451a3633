"""How a job's end is written down, once the lanes have ended it (`Lanes.settle`): what it held
given back, its frames let go (a failed job's tensors must not live on in its future or a log
record), its line in the job's log and the operators' log, its future."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from sdxl.engine.jobs import Job
from sdxl.engine.outcome import Outcome, outcome_of

job_log = logging.getLogger("sdxl.engine")


def write_end(
    job: Job,
    outcome: Outcome,
    error: BaseException | None,
    result: Any,
    runner: Any,
    forgotten: bool = False,
) -> None:
    """Write down the end of `job`, which `outcome` ended with `error` (None: with `result`);
    `forgotten`: its frames were already let go (`forget`)."""
    job.release(runner)
    if error is not None and not forgotten:
        forget(job, error)
    line = end_line(job, outcome)
    job.log(line)
    job_log.info("job %s %s", job.id, line, extra={"prediction_id": job.id})
    if error is None:
        job.future.set_result(result)
    else:
        job.future.set_exception(error)


def forget(job: Job, error: BaseException) -> Outcome:
    """Log what an operator needs of a failure, then let go of its frames."""
    outcome = outcome_of(error, job.id, job.what)
    if outcome.kind == "internal":  # the only failure whose traceback an operator needs
        job_log.error("job %s failed", job.id, exc_info=error)
    forget_frames(error)
    return outcome


def forget_frames(error: BaseException) -> None:
    """Let go of everything the frames of `error` (and of the errors it was raised from or
    during) hold: a failed job's tensors must not live on in its future or a log record."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        following = error.__cause__ or error.__context__
        error.__cause__ = error.__context__ = None
        error = following


def end_line(job: Job, outcome: Outcome) -> str:
    """The last line of the job's log: its kind's own when it succeeded (`Job.done_line`)."""
    took = job.run_seconds
    if outcome.succeeded:
        return job.done_line(took or 0.0)
    if took is None:
        return f"{outcome.status} before it ran: {outcome.message}"
    return f"{outcome.status} after {took:.2f} s: {outcome.message}"
