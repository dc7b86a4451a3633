"""The engine owns the loaded models; every API submits jobs to it and nothing else runs them.

A job moves through three kinds of thread:
1. the caller's: `submit` puts it in the queue (`run` also waits for it, in short timeouts, so
   an exception raised in the caller's thread, such as Cog's cancel, becomes a cancel);
2. preparation threads (`SDXL_PREPARE_WORKERS`): input checks, images, step plan, and trained
   weights downloaded, checked and read into host memory. No model is touched here, so a slow
   download delays only its own job;
3. the one GPU thread: it takes prepared jobs in the order they were submitted and runs each
   under the engine's lock: trained weights applied, denoising, post-processing, and the
   shared models put back before the next job.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

from sdxl.config import LORAS_DIR
from sdxl.engine.jobs import (
    ENDED,
    EngineBroken,
    Job,
    JobCanceled,
    JobEvents,
    JobStatus,
    Poisoned,
    ServerStopping,
    notify,
)
from sdxl.engine.queue import JobQueue, MemoryQueue
from sdxl.engine.settings import EngineSettings
from sdxl.inputs.request import Request
from sdxl.logs import adopt_library_loggers, job_context, quiet_libraries
from sdxl.settings import Runtime

STOPPING = "the server is stopping and this job had not started; send it again"

log = logging.getLogger(__name__)
job_log = logging.getLogger("sdxl.engine")


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"  # loaded and sound: it takes jobs
    LOAD_FAILED = "failed"
    BROKEN = "broken"  # the shared models can no longer be trusted


class Engine:
    def __init__(
        self,
        runtime: Runtime,
        settings: EngineSettings | None = None,
        queue: JobQueue | None = None,
        *,
        models: Any = None,
        cache: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runtime = runtime
        self.settings = settings or EngineSettings()
        self.queue = queue if queue is not None else MemoryQueue()
        self.models = models  # sdxl.model.pipelines.Models, once loaded
        self.cache = cache  # sdxl.adapters.fetch.DownloadCache (None: one for settings.fetch)
        self.clock = clock  # what SDXL_MAX_SECONDS is measured on (tests give their own)
        self.state = EngineState.LOADING
        self.reason: str | None = None  # why the state is failed or broken
        self.load_seconds: float | None = None
        self.lock = threading.RLock()  # held while the shared models are in use or changed
        self._cond = threading.Condition()
        self._claimed: list[Job] = []  # preparing or ready, in claim order
        self._running: Job | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._closed = False
        self.draining = False  # set by drain(): stored jobs are left for others or the next start
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self.runner: Any = None  # sdxl.engine.runner.Runner, once loaded
        # Called with each job once it has ended (metrics); on the engine's threads, so short.
        self.observers: list[Callable[[Job], Any]] = []

    # ---- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Load the models (unless given), then start taking jobs. Raises if loading fails."""
        started = time.perf_counter()
        try:
            quiet_libraries()  # before diffusers and transformers say anything
            adopt_library_loggers()
            from sdxl.engine.runner import Runner

            if self.models is None:
                from sdxl.model.loading import load_models

                self.models = load_models(self.runtime)
            self.runner = Runner(
                self.models, self.settings, self._lora_dir(), self.cache, self.clock
            )
        except BaseException as err:
            self.state, self.reason = EngineState.LOAD_FAILED, f"{type(err).__name__}: {err}"
            raise
        self.load_seconds = time.perf_counter() - started
        self._start_threads()
        self.state = EngineState.READY

    def start_loading(self) -> threading.Thread:
        """`load` on a thread of its own (the APIs answer while the model loads)."""

        def load() -> None:
            try:
                self.load()
            except Exception:
                log.exception("loading the model from %s failed", self.runtime.weights_dir)

        thread = threading.Thread(target=load, name="sdxl-load", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop taking jobs; jobs not yet running are cancelled."""
        with self._cond:
            self._closed = True
            pending = list(self._claimed)
            self._cond.notify_all()
        while (job := self.queue.claim(0, stored=False)) is not None:
            pending.append(job)
        for job in pending:
            job.cancel("the server is shutting down")
            self._end(job, JobCanceled("the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=5)
        if self.runner is not None:
            self.runner.close()

    def drain(self, reason: str = STOPPING) -> int:
        """Stop: only the running job finishes. Stored jobs claimed and not started go back to
        the store's queue (for another replica or the next start); every other job not running
        ends with ServerStopping(`reason`), and so does any job submitted from now on. Returns
        how many were handed back."""
        with self._cond:
            self.draining = True
            waiting = list(self._claimed)
        while (job := self.queue.claim(0, stored=False)) is not None:
            waiting.append(job)
        self._hand_back(waiting, reason)
        return len(waiting)

    def _hand_back(self, jobs: list[Job], reason: str = STOPPING) -> None:
        release = getattr(self.queue, "release_claims", None)  # a queue that stores jobs
        if release is not None:
            release()  # first: their end must not be written as theirs
        for job in jobs:
            self._end(job, ServerStopping(reason))  # first: the cancel then finds it ended
            job.cancel(reason)  # a preparation under way sees it and stops

    @property
    def takes_stored(self) -> bool:
        """Whether the engine takes jobs from a store shared with replicas or the next start."""
        return self.state == EngineState.READY and not self.draining

    def _lora_dir(self) -> Path:
        return self.settings.lora_dir or self.models.weights_dir / LORAS_DIR

    def _start_threads(self) -> None:
        self._pool = ThreadPoolExecutor(self.settings.prepare_workers, "sdxl-prepare")
        for name, target in (("sdxl-claim", self._claim_loop), ("sdxl-gpu", self._gpu_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # ---- jobs ---------------------------------------------------------------------------
    def submit(
        self,
        request: Request,
        *,
        events: JobEvents | None = None,
        job_id: str | None = None,
        preview_every: int = 0,
        tenant: str | None = None,
    ) -> Job:
        """Queue `request`; the returned job ends succeeded, failed or canceled. With
        `preview_every`, it hands out a preview of its latents every that many steps; `tenant`
        is whose it is (queues take tenants in turn)."""
        job = Job(job_id or str(next(self._ids)), request, events, preview_every, tenant)
        job._on_cancel = self._cancel
        if self._closed:
            self._end(job, JobCanceled("the server is shutting down"))
            return job
        if self.draining:
            self._end(job, ServerStopping(STOPPING))
            return job
        self.queue.put(job)
        return job

    def run(self, request: Request, *, on_log=None, events: JobEvents | None = None, poll=0.1):
        """Submit `request` and wait for its Result in this thread, handing each log line to
        `on_log` here. Any exception raised in this thread while it waits (Cog delivers its
        cancel that way) cancels the job; it is raised again once the job has let go."""
        job = self.submit(request, events=events)
        try:
            while not job.wait(poll):
                _hand_out(job, on_log)
        except BaseException:
            job.cancel("the prediction was cancelled")
            _wait_through_interruptions(job)
            raise
        finally:
            _hand_out(job, on_log)
        return job.result()

    def counts(self) -> dict[str, int]:
        with self._cond:
            claimed = [job.status for job in self._claimed]
            running = 1 if self._running is not None else 0
        return {
            "queued": self.queue.waiting(stored=self.takes_stored),
            "preparing": claimed.count(JobStatus.PREPARING) + claimed.count(JobStatus.QUEUED),
            "ready": claimed.count(JobStatus.READY),
            "running": running,
        }

    @property
    def idle(self) -> bool:
        return not any(self.counts().values())

    def health(self) -> dict:
        report: dict[str, Any] = {"state": self.state, **self.counts()}
        if self.reason is not None:
            report["reason"] = self.reason
        if self.runner is not None:
            report["resident"] = self.runner.resident.stats()
        return report

    def peak_device_bytes(self) -> int | None:
        """The most device memory allocated since the model loaded (None on the CPU)."""
        return None if self.runner is None else self.runner.peak_device_bytes()

    # ---- claiming and preparing ---------------------------------------------------------
    def _claim_loop(self) -> None:
        # How many jobs may be claimed but not yet running. A queue shared by replicas says
        # how far ahead it lets one claim; an own queue, one more than can be prepared at once.
        lookahead = getattr(self.queue, "lookahead", None) or self.settings.prepare_workers + 1
        while not self._closed:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._claimed) < lookahead)
            job = self.queue.claim(0.5, stored=self.takes_stored)
            if job is None:
                continue
            with self._cond:
                late = self.draining  # claimed as the drain began: drain() did not see it
                if not late and job.cancel_requested:
                    self._end(job, JobCanceled(job.cancel_reason))
                    continue
                if not late:
                    job.status = JobStatus.PREPARING
                    job.seq = next(self._seq)
                    job._on_cancel = self._cancel
                    self._claimed.append(job)
            if late:
                self._hand_back([job])
            else:
                self._pool.submit(self._prepare, job)

    def _prepare(self, job: Job) -> None:
        try:
            with job_context(job.id):
                self.runner.prepare(job)
        except BaseException as err:
            self._end(job, err)
            return
        with self._cond:
            if job.cancel_requested:
                self._end(job, JobCanceled(job.cancel_reason))
                return
            job.status = JobStatus.READY
            self._cond.notify_all()

    def _cancel(self, job: Job) -> None:
        if self.queue.discard(job):
            self._end(job, JobCanceled(job.cancel_reason))
            return
        with self._cond:
            ready = job.status == JobStatus.READY and job in self._claimed
        if ready:
            self._end(job, JobCanceled(job.cancel_reason))
        # preparing: the preparation sees it; running: the next denoising step sees it

    # ---- running ------------------------------------------------------------------------
    def _gpu_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._next_ready() is not None)
                if self._closed:
                    return
                job = self._next_ready()
                self._claimed.remove(job)
                self._running = job
                job.status = JobStatus.RUNNING
                self._cond.notify_all()
            try:
                with job_context(job.id):
                    self._execute(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _next_ready(self) -> Job | None:
        """The first job in claim order that is prepared. A job still preparing that fetches
        nothing is ready within moments, so it is waited for rather than overtaken; one that
        downloads may be overtaken by the prepared jobs behind it."""
        for job in sorted(self._claimed, key=lambda j: j.seq):
            if job.status == JobStatus.READY:
                return job
            if not job.downloads:
                return None
        return None

    def _execute(self, job: Job) -> None:
        job.started_at = time.time()
        notify(job.events.started, job)
        with self.lock:
            try:
                if self.state == EngineState.BROKEN:
                    raise EngineBroken(self.broken_message())
                result = self.runner.run(job)
            except Poisoned as err:
                self.state, self.reason = EngineState.BROKEN, err.reason
                log.error("the shared models can no longer be trusted: %s", err.reason)
                self._end(job, EngineBroken(self.broken_message()))
                return
            except BaseException as err:
                self._end(job, err)
                return
        self._end(job, None, result)

    def broken_message(self) -> str:
        return (
            f"the model server is out of order ({self.reason}); it must be restarted, and "
            "every job fails until then"
        )

    def _end(self, job: Job, error: BaseException | None, result: Any = None) -> None:
        """Settle `job` once: status, future, the weights it held, the finished event."""
        with self._cond:
            if job.status in ENDED:
                return
            if job in self._claimed:
                self._claimed.remove(job)
            job.status = JobStatus.SUCCEEDED if error is None else _status_of(error)
            job.finished_at = time.time()
            self._cond.notify_all()
        if self.runner is not None:
            self.runner.release(job)
        line = end_line(job, error)
        job.log(line)
        job_log.info("job %s %s", job.id, line, extra={"prediction_id": job.id})
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)
        for observer in self.observers:
            notify(observer, job)
        notify(job.events.finished, job)


def _status_of(error: BaseException) -> JobStatus:
    stopped = isinstance(error, JobCanceled | ServerStopping)
    return JobStatus.CANCELED if stopped else JobStatus.FAILED


def _hand_out(job: Job, on_log) -> None:
    if on_log is not None:
        for line in job.take_logs():
            on_log(line)


def _wait_through_interruptions(job: Job) -> None:
    """Wait until the engine has let go of `job`, whatever else is raised meanwhile."""
    while True:
        try:
            if job.wait(0.1):
                return
        except BaseException:  # a second cancel while the first is being honoured
            continue


def end_line(job: Job, error: BaseException | None) -> str:
    took = job.run_seconds
    if error is None:
        plan = job.generation.plan
        return (
            f"done in {took or 0.0:.2f} s: base ran {job.steps['base']} steps, refiner ran "
            f"{job.steps['refiner']} steps (planned {plan.base_steps} + {plan.refiner_steps}); "
            f"seeds {job.generation.seeds}"
        )
    status = _status_of(error)
    if took is None:
        return f"{status} before it ran: {error}"
    return f"{status} after {took:.2f} s: {error}"
