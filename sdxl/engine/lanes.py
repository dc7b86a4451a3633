"""The engine's threads and the jobs between them, as a job moves:

1. the claim thread takes the next job from the queue (tenants in turn) while fewer than one
   job waits prepared or preparing beyond the running one (jobs that download do not count,
   up to SDXL_PREPARE_WORKERS of them, nor do trainings), so a tenant that arrives behind a
   backlog starts after at most the running job and the one claimed ahead;
2. preparation threads (`Job.prepare`: for a generation `Runner.prepare`): checks, images, step
   plan, trained weights read into host memory; no model is touched, so a slow download delays
   only its own job. Trainings (their archive fetched, read and checked: long for a large or
   hostile one) are prepared on threads of their own (TRAININGS_PREPARED_AT_ONCE), so that
   they never hold back a generation's preparation, nor one another (the shared queue claims
   another tenant's training while one is still being prepared);
3. the GPU thread: the first prepared job in claim order, under the engine's lock
   (`Job.run_on`: a generation's `Runner.run`, a training's slices); it hands the decoded
   pixels on and takes the next job at once;
4. the finishing thread (`Job.finish`: for a generation `Runner.finish`): images, watermark,
   kept pixels, safety checker, while the next job denoises;
5. the delivery thread: the job events (started, logs, previews, finished), in order, to their
   listeners (which may write to a database); only `step` is called on the GPU thread.

`Lanes` is the one owner of the jobs between the queue and their end (claimed, running,
training, finishing) and of whether it takes jobs (closed, draining); the engine and the
training's slices ask it through its methods. It holds of the engine only what it is given:
the queue, the lock, the device tasks, and `Hooks` for the engine's state.

A job that fails leaves nothing reachable: its exception's frames are cleared, Python's cycles
collected and the device's cache emptied before the next job runs (after an out-of-memory
error the next job gets the memory back).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdxl.engine.device_tasks import DeviceTasks
from sdxl.engine.ending import forget, write_end
from sdxl.engine.jobs import (
    ENDED,
    EngineBroken,
    Job,
    JobCanceled,
    JobStatus,
    ServerStopping,
    notify,
)
from sdxl.engine.outcome import Outcome, outcome_of
from sdxl.engine.queue import JobQueue
from sdxl.logs import job_context

if TYPE_CHECKING:
    from sdxl.engine.training_job import TrainingJob

log = logging.getLogger("sdxl.engine.engine")

CLAIM_RETRY_S = 1.0  # after a claim that raised, wait this long before the next
# A claim waits this long at most (a safety net): what changes what it may take wakes it
# (`changed`), and a job put or stored wakes the queue itself.
CLAIM_WAIT_S = 30.0
LOOKAHEAD = 1  # jobs prepared or preparing beyond the running one (downloads aside)
TRAININGS_PREPARED_AT_ONCE = 2  # trainings prepared at once, each on a thread of its own
STOPPING = "the server is stopping and this job had not started; send it again"
SHUTTING_DOWN = "the server is shutting down"


@dataclass(frozen=True)
class Hooks:
    """What the lanes ask of the engine that owns the models."""

    takes_stored: Callable[[], bool]  # whether to claim jobs from a store shared with others
    broken: Callable[[], EngineBroken | None]  # what every job fails with until a restart
    break_down: Callable[[str], EngineBroken]  # the models can no longer be trusted: why
    free_memory: Callable[[], None]  # after a failure, on the GPU thread
    observe: Callable[[Job], None]  # each job once it has ended (metrics): short


class Lanes:
    def __init__(
        self,
        queue: JobQueue,
        lock: threading.RLock,
        device_tasks: DeviceTasks,
        hooks: Hooks,
        prepare_workers: int,
    ):
        self.queue = queue
        self.lock = lock  # the engine's: held while the shared models are in use
        self.device_tasks = device_tasks
        self.hooks = hooks
        self.runner: Any = None  # sdxl.engine.runner.Runner, from `start`
        self._cond = threading.Condition()
        self._claimed: list[Job] = []  # preparing or ready, in claim order
        self._running: Job | None = None  # on the GPU
        self._training: TrainingJob | None = None  # under way (generations run between steps)
        self._finishing: list[Job] = []  # the GPU is done with them; their results are made
        self._closed = False
        self._changes = 0  # what the claim thread may take changed this many times (`changed`)
        self._changes_lock = threading.Lock()
        self._draining = False  # stored jobs are left for others or the next start
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._lock_released_at: float | None = None
        self._peak: int | None = None  # the most device memory one job has allocated
        self._prepare_workers = prepare_workers
        self.prepare_pool = ThreadPoolExecutor(prepare_workers, "sdxl-prepare")
        self.training_pool = ThreadPoolExecutor(TRAININGS_PREPARED_AT_ONCE, "sdxl-prepare-training")
        self.finish_pool = ThreadPoolExecutor(1, "sdxl-finish")
        self.delivery = ThreadPoolExecutor(1, "sdxl-events")

    def start(self, runner, warm_up: Callable[[], None], warmed: threading.Event) -> None:
        """The threads, for `runner`; the GPU thread calls `warm_up` first, then sets
        `warmed`."""
        self.runner = runner
        for name, target, args in (
            ("sdxl-claim", self._claim_loop, ()),
            ("sdxl-gpu", self._gpu_loop, (warm_up, warmed)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # ---- what the engine asks -----------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue `job`, or end it at once when the lanes take no job."""
        self._adopt(job)
        with self._cond:
            closed, draining = self._closed, self._draining
        if closed:
            self.settle(job, JobCanceled(SHUTTING_DOWN))
        elif draining:
            self.settle(job, ServerStopping(STOPPING))
        else:
            self.queue.put(job)

    def cancel(self, job: Job) -> None:
        """A job's cancel: out of the queue, or settled if it waits prepared; a job preparing
        sees it in its preparation, a running one at its next step."""
        if self.queue.discard(job):
            self.settle(job, JobCanceled(job.cancel_reason))
            return
        with self._cond:
            ready = job.status == JobStatus.READY and job in self._claimed
        if ready:
            self.settle(job, JobCanceled(job.cancel_reason))

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self, reason: str) -> int:
        """Take no job from now on (`submit` ends them with ServerStopping); the jobs claimed
        and not running, and those in memory, are handed back; a running training stops at its
        next step. Returns how many were handed back."""
        with self._cond:
            self._draining = True
            waiting = list(self._claimed)
            training = self._training
        self.changed()  # no stored job from now on
        waiting += self._take_from_memory()
        self.hand_back(waiting, reason)
        if training is not None:  # it stops at its next step, leaving a checkpoint
            log.info("stopping training %s after step %d", training.id, training.steps["train"])
            training.stop(reason)
        return len(waiting)

    def hand_back(self, jobs: list[Job], reason: str = STOPPING) -> None:
        self.queue.release_claims()  # first: their end must not be written as theirs
        for job in jobs:
            self.settle(job, ServerStopping(reason))  # first: the cancel then finds it ended
            job.cancel(reason)  # a preparation under way sees it and stops

    def close(self) -> None:
        """Take no job: those not running are cancelled; the threads stop."""
        with self._cond:
            self._closed = True
            pending = list(self._claimed)
            self._cond.notify_all()
        self.changed()  # the claim under way returns
        self.device_tasks.serve_from(None)  # callers run their tasks themselves again
        for job in pending + self._take_from_memory():
            job.cancel(SHUTTING_DOWN)
            self.settle(job, JobCanceled(SHUTTING_DOWN))
        self.prepare_pool.shutdown(wait=True, cancel_futures=True)
        self.training_pool.shutdown(wait=True, cancel_futures=True)  # they were cancelled
        for thread in self._threads:
            thread.join(timeout=5)
        self.finish_pool.shutdown(wait=True)
        self.delivery.shutdown(wait=True)

    def _take_from_memory(self) -> list[Job]:
        taken = []
        while (job := self.queue.claim(0, stored=False)) is not None:
            taken.append(job)
        return taken

    def counts(self) -> dict[str, int]:
        with self._cond:
            claimed = [job.status for job in self._claimed]
            return {
                "preparing": claimed.count(JobStatus.PREPARING) + claimed.count(JobStatus.QUEUED),
                "ready": claimed.count(JobStatus.READY),
                "running": 1 if self._running is not None else 0,
                "training": 1 if self._training is not None else 0,
                "finishing": len(self._finishing),
            }

    def current_training(self) -> TrainingJob | None:
        with self._cond:
            return self._training

    def peak_device_bytes(self) -> int | None:
        """The most device memory one job has allocated (None on the CPU)."""
        return self._peak

    def _adopt(self, job: Job) -> None:
        """Its cancel and its events go through the lanes (a stored job is adopted when it is
        claimed, one submitted here when it is submitted)."""
        job._on_cancel = self.cancel
        job.deliver = self.deliver

    def deliver(self, callback, *args) -> None:
        """Hand a job event to its listener on the delivery thread, in order."""
        if callback is None:
            return
        try:
            self.delivery.submit(notify, callback, *args)
        except RuntimeError:  # closing: deliver here
            notify(callback, *args)

    # ---- 1. claiming and 2. preparing ---------------------------------------------------
    def _room(self) -> bool:
        waiting = [job for job in self._claimed if job.holds_back_claims]
        pooled = [job for job in self._claimed if not job.prepares_apart]
        most = LOOKAHEAD + self._prepare_workers
        return len(waiting) < LOOKAHEAD and len(pooled) < most

    def _claim_loop(self) -> None:
        while not self._closed:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._room())
                busy = self._running is not None or self._training is not None
                seen = self._changes  # before what the claim asks for is read
            stored = self.hooks.takes_stored()
            try:
                job = self.queue.claim(
                    CLAIM_WAIT_S,
                    stored=stored,
                    ahead=busy,
                    stale=lambda seen=seen: self._changes != seen or self._closed,
                )
            except Exception:  # a queue's bug must not stop the engine claiming for good
                log.exception("claiming the next job failed; claiming again in a moment")
                time.sleep(CLAIM_RETRY_S)
                continue
            if job is None:
                continue
            with self._cond:
                late = self._draining  # claimed as the drain began: drain() did not see it
                canceled = not late and job.cancel_requested
                if not (late or canceled):
                    job.status = JobStatus.PREPARING
                    job.seq = next(self._seq)
                    self._adopt(job)
                    self._claimed.append(job)
            if late:
                self.hand_back([job])
            elif canceled:
                self.settle(job, JobCanceled(job.cancel_reason))
            else:
                pool = self.training_pool if job.prepares_apart else self.prepare_pool
                pool.submit(self._prepare, job)

    def _prepare(self, job: Job) -> None:
        try:
            with job_context(job.id):
                job.prepare(self.runner)
        except BaseException as err:
            self.settle(job, err)
            return
        with self._cond:
            if not job.cancel_requested:
                job.status = JobStatus.READY
                job.ready_at = time.monotonic()
                self._cond.notify_all()
                return
        self.settle(job, JobCanceled(job.cancel_reason))

    # ---- 3. the GPU thread --------------------------------------------------------------
    def _gpu_loop(self, warm_up: Callable[[], None], warmed: threading.Event) -> None:
        try:
            warm_up()  # here: CUDA graph trees keep per-thread state
        finally:
            warmed.set()
        self.device_tasks.serve_from(self._wake_gpu)  # every device task on this thread
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._closed or self._next_ready() is not None or self.device_tasks.waiting
                    )
                )
                if self._closed:
                    return
                ready = self._next_ready()
                job = None if ready is None else self._take(ready)
            if job is None:  # idle, and a finished job's safety checker waits
                with self.lock:
                    self.device_tasks.run_pending()
                continue
            with job_context(job.id):
                job.run_on(self)

    def _wake_gpu(self) -> None:
        """A device task waits: the idle GPU thread runs it (a running job does between two
        steps)."""
        with self._cond:
            self._cond.notify_all()

    def _next_ready(self, between_slices: bool = False) -> Job | None:
        """The first job in claim order that is prepared. A job still preparing that may not be
        overtaken (a generation that fetches nothing: ready within moments) is waited for; one
        that downloads, or a training (its archive read and checked), may be overtaken by the
        prepared jobs behind it. `between_slices`: only the jobs that may run between two
        slices of a training."""
        for job in sorted(self._claimed, key=lambda j: j.seq):
            if between_slices and not job.runs_between_slices:
                continue
            if job.status == JobStatus.READY:
                return job
            if not job.may_be_overtaken:
                return None
        return None

    def _take(self, job: Job) -> Job:
        """`job`, now the running one (the condition held)."""
        self._claimed.remove(job)
        self._running = job
        job.status = JobStatus.RUNNING
        self._cond.notify_all()
        self.changed()  # busy now: the claim thread asks again, ahead of the GPU
        return job

    def changed(self) -> None:
        """What the claim thread may take changed (the GPU became busy or free, the engine
        ready, broken, draining or closing): its claim under way returns, to ask again."""
        with self._changes_lock:
            self._changes += 1
        self.queue.wake()

    def took_lock(self, job: Job) -> None:
        """`job` took the engine's lock, on the GPU thread: how long the lock stood idle while
        it was ready for it."""
        job.gpu_started_at = time.monotonic()
        if self._lock_released_at is not None and job.ready_at is not None:
            idle = job.gpu_started_at - max(self._lock_released_at, job.ready_at)
            job.lock_idle_s = max(0.0, idle)

    def lets_go_of_lock(self, job: Job) -> None:
        job.gpu_ended_at = self._lock_released_at = time.monotonic()

    # ---- a training's slices (`TrainingJob.run_on`) --------------------------------------
    def begin_training(self, job: TrainingJob) -> None:
        """The running `job` is a training under way: generations may run between its slices."""
        with self._cond:
            self._training, self._running = job, None
            self._cond.notify_all()

    def run_one_between(self) -> None:
        """Run the first generation that waits prepared, if one does (fair share: one per
        slice of the training under way)."""
        with self._cond:
            waiting = self._next_ready(between_slices=True)
            if waiting is None:
                return
            self._take(waiting)
        waiting.run_on(self)

    # ---- 4. the finishing thread --------------------------------------------------------
    def off_the_gpu(self, job: Job, error: BaseException | None, denoised: Any) -> None:
        """`job` has let go of the GPU (`error`: what ended its GPU work, None when done): on
        to the finishing thread with `denoised`, or ended."""
        outcome = None
        if error is not None:
            outcome = forget(job, error)
            self.hooks.free_memory()  # before the next job: what the failed one held is gone
        with self._cond:
            if self._running is job:
                self._running = None
            if self._training is job:
                self._training = None
            if error is None:
                self._finishing.append(job)
            self._cond.notify_all()
        self.changed()  # the GPU is free: no need to leave new stored jobs to others
        if error is None:
            self.finish_pool.submit(self._finish, job, denoised)
        else:
            self.settle(job, error, forgotten=outcome)

    def _finish(self, job: Job, denoised: Any) -> None:
        try:
            with job_context(job.id):
                result = job.finish(self.runner, denoised)
        except BaseException as err:
            outcome = forget(job, err)
            self.device_tasks.call(self.hooks.free_memory)  # the checker's, say
            self.settle(job, err, forgotten=outcome)
        else:
            self.settle(job, None, result)
        finally:
            with self._cond:
                self._finishing.remove(job)
                self._cond.notify_all()

    # ---- every thread: a job's end ------------------------------------------------------
    def settle(
        self,
        job: Job,
        error: BaseException | None,
        result: Any = None,
        forgotten: Outcome | None = None,
    ) -> None:
        """End `job` once: status from the outcome table, then `write_end` (`forgotten`: its
        frames already forgotten, by `forget`), the engine's observers, the finished event."""
        outcome = forgotten or outcome_of(error, job.id, job.what)
        with self._cond:
            if job.status in ENDED:
                return
            if job in self._claimed:
                self._claimed.remove(job)
            job.status = outcome.status
            job.outcome = outcome
            job.finished_at = time.time()
            if job.peak_device_bytes is not None:
                self._peak = max(self._peak or 0, job.peak_device_bytes)
            self._cond.notify_all()
        write_end(job, outcome, error, result, self.runner, forgotten is not None)
        self.hooks.observe(job)
        self.deliver(job.events.finished, job)
