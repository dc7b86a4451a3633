"""A job: one request on its way through the engine, and the ways it can end.

queued -> preparing -> ready -> running -> succeeded | failed | canceled. A job can be
cancelled in any state; `future` holds its `Result` or the exception that ended it.
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
from sdxl.inputs.request import Request


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
    """One request on its way through the engine; its images are decoded and its trained
    weights read when it is prepared."""

    def __init__(
        self,
        job_id: str,
        request: Request | None,
        events: JobEvents | None = None,
        preview_every: int = 0,
        tenant: str | None = None,
        work: Any = None,
    ):
        self.id = job_id
        self.request = request  # a generation's; None for a training
        # A training's work (sdxl.train.training.Training): prepared, then run in slices on the
        # GPU thread with predictions between them, then finished.
        self.work = work
        # Whose job it is (a tenant's name, never a key): queues take the tenants in turn.
        self.tenant = tenant
        self.events = events or JobEvents()
        # A preview of the latents every this many steps of each stage, and after its last
        # (0: none); each is in `preview` and goes to events.preview, all before `finished`.
        self.preview_every = preview_every
        self.preview: Any = None  # the latest sdxl.generate.preview.Preview
        self.seq = 0  # claim order, set by the engine: the GPU takes ready jobs in this order
        # Whether preparing it fetches something (trained weights, image URLs): only such a
        # job can be overtaken by the ones behind it; the others are waited for, in order.
        self.downloads = request.fetches if request is not None else False
        self.status = JobStatus.QUEUED
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.future: Future = Future()
        self.outcome: Any = None  # sdxl.engine.outcome.Outcome, once it ended
        self.logs: list[str] = []
        self.steps: dict[str, int] = {"base": 0, "refiner": 0}  # UNet steps run, per stage
        if work is not None:
            self.steps = {"train": 0}  # training steps run
        self.generation: Any = None  # sdxl.generate.plan.Generation, once prepared
        self.weights: Any = None  # sdxl.adapters.staging.StagedWeights, once prepared
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
        return f"Job({self.id!r}, {self.status})"

    @property
    def is_training(self) -> bool:
        return self.work is not None

    # ---- for callers --------------------------------------------------------------------
    def cancel(self, reason: str = "the prediction was cancelled") -> None:
        """Stop the job: it leaves the queue, or stops at its next denoising step."""
        with self._lock:
            if self.status in ENDED or self._cancel_reason is not None:
                return
            self._cancel_reason = reason
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


def notify(callback, *args) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # a listener's bug must not fail the job or stop the engine
        log.exception("a job event listener failed")
