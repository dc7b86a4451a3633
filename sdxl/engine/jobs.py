"""A job: one generation or one training on its way through the engine, and the ways it can end.

queued -> preparing -> ready -> running -> succeeded | failed | canceled. A job can be
cancelled in any state; `future` holds its result (a generation's `Result`, a training's
`TrainingResult`) or the exception that ended it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sdxl.errors import UserError


class JobStatus(StrEnum):
    """Where a job is in the engine."""

    QUEUED = "queued"
    PREPARING = "preparing"
    READY = "ready"  # prepared, waiting for the GPU
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


ENDED = frozenset((JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED))

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The job was cancelled: by its client, or by a client that went away."""


class ServerStopping(Exception):
    """The process is stopping and the job had not started: it is handed back (a stored job
    stays queued for another replica or the next start; a caller waiting for it should retry)."""


class DeadlineExceeded(Exception):
    """The job ran longer than SDXL_MAX_SECONDS."""


class EngineBroken(RuntimeError):
    """The shared models can no longer be trusted; every job fails until a restart."""


class Poisoned(Exception):
    """The shared models or the device can no longer be trusted (raised inside the engine)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OutOfMemory(UserError):
    """The device ran out of memory for this job; the message says what to lower."""


@dataclass
class JobEvents:
    """Callbacks about a job. `step` is called on the GPU thread between two denoising steps
    (it may cancel the job, which then runs no further step): keep it to counting. The others
    come in order on the engine's delivery thread, never on the GPU thread (a listener may
    write to a database). A callback that raises is logged and ignored."""

    started: Callable[[Job], Any] | None = None
    step: Callable[[Job, str, int, int], Any] | None = None  # stage, steps done, planned
    log: Callable[[Job, str], Any] | None = None
    preview: Callable[[Job, Any], Any] | None = None  # a sdxl.generate.preview.Preview, in order
    finished: Callable[[Job], Any] | None = None


class Job:
    """What every job on its way through the engine has: its id, whose it is, its events, its
    status and future, its outcome, log lines and timings, and its cancel. A job is of one of
    two kinds, `sdxl.engine.generation_job.GenerationJob` and
    `sdxl.engine.training_job.TrainingJob`; each says how it is prepared, run on the GPU
    thread and finished, and the line its end writes."""

    what = "job"  # the kind, as its messages name it
    CANCELED = "the job was cancelled"  # a cancel's reason when its caller gives none

    def __init__(self, job_id: str, events: JobEvents | None = None, tenant: str | None = None):
        self.id = job_id
        # Whose job it is (a tenant's name, never a key): queues take the tenants in turn.
        self.tenant = tenant
        self.events = events or JobEvents()
        self.seq = 0  # claim order, set by the engine: the GPU takes ready jobs in this order
        self.status = JobStatus.QUEUED
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.future: Future = Future()
        self.outcome: Any = None  # sdxl.engine.outcome.Outcome, once it ended
        self.logs: list[str] = []
        self.steps: dict[str, int] = {}  # steps run, by stage (each kind names its stages)
        # On the GPU, by the engine's monotonic clock: when it was prepared, when it took the
        # lock and let it go; how long the lock stood idle while it was ready; its peak device
        # memory (None on the CPU).
        self.ready_at: float | None = None
        self.gpu_started_at: float | None = None
        self.gpu_ended_at: float | None = None
        self.lock_idle_s: float | None = None
        self.peak_device_bytes: int | None = None
        # How its events reach their listeners (the engine's delivery thread; alone: at once).
        self.deliver: Callable[..., None] = notify
        self.stopping = False  # stopped by a drain (`stop`), not cancelled by its client
        self._taken = 0  # log lines handed out by take_logs
        self._lock = threading.Lock()
        self._cancel_reason: str | None = None
        self._on_cancel: Callable[[Job], None] = lambda job: None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, {self.status})"

    # ---- for callers --------------------------------------------------------------------
    def cancel(self, reason: str | None = None) -> None:
        """Stop the job: it leaves the queue, or stops at its next step (`reason`: what its
        end says; the kind's own words when None)."""
        with self._lock:
            if self.status in ENDED or self._cancel_reason is not None:
                return
            self._cancel_reason = reason or self.CANCELED
        self._on_cancel(self)

    def stop(self, reason: str) -> None:
        """The server stops: a running training ends at its next step with ServerStopping
        (handed back, to go on from its checkpoint), not as cancelled."""
        self.stopping = True
        self.cancel(reason)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_reason is not None

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    def done(self) -> bool:
        return self.future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has ended."""
        try:
            self.future.exception(timeout)
        except TimeoutError:
            return False
        return True

    def result(self, timeout: float | None = None):
        return self.future.result(timeout)

    def take_logs(self) -> list[str]:
        """The log lines not taken before."""
        with self._lock:
            lines = self.logs[self._taken :]
            self._taken = len(self.logs)
        return lines

    @property
    def error(self) -> BaseException | None:
        return self.future.exception() if self.future.done() else None

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    # ---- for the engine -----------------------------------------------------------------
    def check(self, deadline: float | None = None, clock=time.monotonic) -> None:
        """Raise JobCanceled or DeadlineExceeded if the job must stop now (`deadline` is a time
        of `clock`)."""
        if self._cancel_reason is not None:
            raise JobCanceled(self._cancel_reason)
        if deadline is not None and clock() > deadline:
            raise DeadlineExceeded()

    def log(self, line: str) -> None:
        with self._lock:
            self.logs.append(line)
        self.deliver(self.events.log, self, line)

    # ---- what each kind does, on the engine's threads (`sdxl.engine.lanes`) --------------
    # Whether a job claimed after it may start before it while it prepares (one that
    # downloads, or a training: a slow preparation must not hold the GPU back).
    may_be_overtaken = False
    runs_between_slices = False  # whether it may run between two slices of a training
    prepares_apart = False  # prepared on threads of its own kind (a training's long archive read)

    @property
    def holds_back_claims(self) -> bool:
        """Whether it counts among the jobs prepared ahead of the GPU (the claim thread claims
        no further job while one does)."""
        return True

    def prepare(self, runner) -> None:
        """On a preparation thread: everything but the GPU (`runner`: sdxl.engine.runner)."""
        raise NotImplementedError

    def run_on(self, lanes) -> None:
        """On the GPU thread, `lanes` (sdxl.engine.lanes.Lanes) having made it the running job;
        it ends with `lanes.off_the_gpu`."""
        raise NotImplementedError

    def finish(self, runner, denoised: Any) -> Any:
        """On the finishing thread, off the lock: the job's result."""
        raise NotImplementedError

    def release(self, runner) -> None:
        """Once it ended: give back what it held (idempotent; `runner` None before loading)."""

    def done_line(self, took: float) -> str:
        """The last line of its log when it succeeded."""
        raise NotImplementedError


def notify(callback, *args) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # a listener's bug must not fail the job or stop the engine
        log.exception("a job event listener failed")
