"""How a job's end is written down: its frames let go (a failed job's tensors must not live on
in its future or a log record), and its line in the job's log."""

from __future__ import annotations

import traceback

from sdxl.engine.jobs import Job
from sdxl.engine.outcome import Outcome


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
    took = job.run_seconds
    if outcome.succeeded and job.is_training:
        return f"done in {took or 0.0:.2f} s: {job.steps['train']} training steps"
    if outcome.succeeded:
        plan = job.generation.plan
        peak = job.peak_device_bytes
        memory = "" if peak is None else f"; peak GPU memory {peak / 2**30:.2f} GiB"
        return (
            f"done in {took or 0.0:.2f} s: base ran {job.steps['base']} steps, refiner ran "
            f"{job.steps['refiner']} steps (planned {plan.base_steps} + {plan.refiner_steps}); "
            f"seeds {job.generation.seeds}{memory}"
        )
    if took is None:
        return f"{outcome.status} before it ran: {outcome.message}"
    return f"{outcome.status} after {took:.2f} s: {outcome.message}"
