"""The engine's threads and the jobs between them, as a job moves:

1. the claim thread takes the next job from the queue (tenants in turn) while fewer than one
   job waits prepared or preparing beyond the running one (jobs that download do not count,
   up to SDXL_PREPARE_WORKERS of them), so a tenant that arrives behind a backlog starts after
   at most the running job and the one claimed ahead;
2. preparation threads (`Runner.prepare`): checks, images, step plan, trained weights read into
   host memory; no model is touched, so a slow download delays only its own job;
3. the GPU thread: the first prepared job in claim order, under the engine's lock
   (`Runner.run`); it hands the decoded pixels on and takes the next job at once;
4. the finishing thread (`Runner.finish`): images, watermark, kept pixels, safety checker,
   while the next job denoises;
5. the delivery thread: the job events (started, logs, previews, finished), in order, to their
   listeners (which may write to a database); only `step` is called on the GPU thread.

A job that fails leaves nothing reachable: its exception's frames are cleared, Python's cycles
collected and the device's cache emptied before the next job runs (after an out-of-memory
error the next job gets the memory back).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdxl.engine.ending import end_line, forget_frames
from sdxl.engine.jobs import ENDED, EngineBroken, Job, JobCanceled, JobStatus, Poisoned, notify
from sdxl.engine.outcome import Outcome, outcome_of
from sdxl.engine.trainings import run_training
from sdxl.logs import job_context

log = logging.getLogger("sdxl.engine.engine")
job_log = logging.getLogger("sdxl.engine")

LOOKAHEAD = 1  # jobs prepared or preparing beyond the running one (downloads aside)


class Lanes:
    def __init__(self, engine):
        self.engine = engine  # its queue, runner, lock, settings, state and observers
        self.cond = threading.Condition()
        self.claimed: list[Job] = []  # preparing or ready, in claim order
        self.running: Job | None = None  # on the GPU
        self.training: Job | None = None  # a training under way (predictions run between steps)
        self.finishing: list[Job] = []  # the GPU is done with them; their images are made
        self.closed = False
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._lock_released_at: float | None = None
        self.prepare_pool = ThreadPoolExecutor(engine.settings.prepare_workers, "sdxl-prepare")
        self.finish_pool = ThreadPoolExecutor(1, "sdxl-finish")
        self.delivery = ThreadPoolExecutor(1, "sdxl-events")

    def start(self, warmed: threading.Event) -> None:
        """The threads; the GPU thread warms the models up first and sets `warmed`."""
        for name, target, args in (
            ("sdxl-claim", self._claim_loop, ()),
            ("sdxl-gpu", self._gpu_loop, (warmed,)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def deliver(self, callback, *args) -> None:
        """Hand a job event to its listener on the delivery thread, in order."""
        if callback is None:
            return
        try:
            self.delivery.submit(notify, callback, *args)
        except RuntimeError:  # closing: deliver here
            notify(callback, *args)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.prepare_pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=5)
        self.finish_pool.shutdown(wait=True)
        self.delivery.shutdown(wait=True)

    def counts(self) -> dict[str, int]:
        with self.cond:
            claimed = [job.status for job in self.claimed]
            return {
                "preparing": claimed.count(JobStatus.PREPARING) + claimed.count(JobStatus.QUEUED),
                "ready": claimed.count(JobStatus.READY),
                "running": 1 if self.running is not None else 0,
                "training": 1 if self.training is not None else 0,
                "finishing": len(self.finishing),
            }

    # ---- 1. claiming and 2. preparing ---------------------------------------------------
    def _room(self) -> bool:
        # A job that downloads, or a training, does not hold the next job back.
        waiting = [job for job in self.claimed if not (_downloading(job) or job.is_training)]
        most = LOOKAHEAD + self.engine.settings.prepare_workers
        return len(waiting) < LOOKAHEAD and len(self.claimed) < most

    def _claim_loop(self) -> None:
        engine = self.engine
        while not self.closed:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self._room())
            with self.cond:
                busy = self.running is not None or self.training is not None
            job = engine.queue.claim(0.5, stored=engine.takes_stored, ahead=busy)
            if job is None:
                continue
            with self.cond:
                late = engine.draining  # claimed as the drain began: drain() did not see it
                if not late and job.cancel_requested:
                    self.settle(job, JobCanceled(job.cancel_reason))
                    continue
                if not late:
                    job.status = JobStatus.PREPARING
                    job.seq = next(self._seq)
                    self.adopt(job)
                    self.claimed.append(job)
            if late:
                engine.hand_back([job])
            else:
                self.prepare_pool.submit(self._prepare, job)

    def adopt(self, job: Job) -> None:
        job._on_cancel = self.engine.cancel
        job.deliver = self.deliver

    def _prepare(self, job: Job) -> None:
        try:
            with job_context(job.id):
                if job.is_training:
                    job.work.prepare(job.check)
                else:
                    self.engine.runner.prepare(job)
        except BaseException as err:
            self.settle(job, err)
            return
        with self.cond:
            if job.cancel_requested:
                self.settle(job, JobCanceled(job.cancel_reason))
                return
            job.status = JobStatus.READY
            job.ready_at = time.monotonic()
            self.cond.notify_all()

    # ---- 3. the GPU thread --------------------------------------------------------------
    def _gpu_loop(self, warmed: threading.Event) -> None:
        try:
            self.engine.warm_up()  # here: CUDA graph trees keep per-thread state
        finally:
            warmed.set()
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self.next_ready() is not None)
                if self.closed:
                    return
                job = self.next_ready()
                self.claimed.remove(job)
                self.running = job
                job.status = JobStatus.RUNNING
                self.cond.notify_all()
            with job_context(job.id):
                if job.is_training:
                    run_training(self, job)
                else:
                    self.execute(job)

    def next_ready(self, predictions_only: bool = False) -> Job | None:
        """The first job in claim order that is prepared. A job still preparing that fetches
        nothing is ready within moments, so it is waited for rather than overtaken; one that
        downloads, or a training (its archive read and checked), may be overtaken by the
        prepared jobs behind it. `predictions_only`: between a training's steps."""
        for job in sorted(self.claimed, key=lambda j: j.seq):
            if predictions_only and job.is_training:
                continue
            if job.status == JobStatus.READY:
                return job
            if not (job.downloads or job.is_training):
                return None
        return None

    def execute(self, job: Job) -> None:
        engine = self.engine
        job.started_at = time.time()
        self.deliver(job.events.started, job)
        error: BaseException | None = None
        with engine.lock:
            job.gpu_started_at = time.monotonic()
            job.lock_idle_s = self._idle_before(job)
            try:
                if engine.broken:
                    raise EngineBroken(engine.broken_message())
                denoised = engine.runner.run(job)
            except Poisoned as err:
                engine.break_down(err.reason)
                error = EngineBroken(engine.broken_message())
                forget_frames(err)
            except BaseException as err:
                error = err
            job.gpu_ended_at = self._lock_released_at = time.monotonic()
        if error is not None:
            outcome = self.forget(job, error)
            engine.free_memory()  # before the next job: what the failed one held is gone
        with self.cond:
            self.running = None
            if error is None:
                self.finishing.append(job)
            self.cond.notify_all()
        if error is None:
            self.finish_pool.submit(self._finish, job, denoised)
        else:
            self.settle(job, error, forgotten=outcome)

    def _idle_before(self, job: Job) -> float | None:
        """How long the lock stood idle while `job` was ready for it."""
        if self._lock_released_at is None or job.ready_at is None:
            return None
        return max(0.0, job.gpu_started_at - max(self._lock_released_at, job.ready_at))

    # ---- 4. the finishing thread --------------------------------------------------------
    def finish_training(self, job: Job) -> None:
        """The training's tar written, off the lock."""
        self._finish(job, None, job.work.finish)

    def _finish(self, job: Job, denoised, finishing=None) -> None:
        try:
            with job_context(job.id):
                result = finishing() if finishing else self.engine.runner.finish(job, denoised)
        except BaseException as err:
            outcome = self.forget(job, err)
            self.engine.device_tasks.call(self.engine.free_memory)  # the checker's, say
            self.settle(job, err, forgotten=outcome)
        else:
            self.settle(job, None, result)
        finally:
            with self.cond:
                self.finishing.remove(job)
                self.cond.notify_all()

    # ---- every thread: a job's end ------------------------------------------------------
    def settle(
        self,
        job: Job,
        error: BaseException | None,
        result: Any = None,
        forgotten: Outcome | None = None,
    ) -> None:
        """End `job` once: status from the outcome table, the weights it held, its frames
        forgotten (`forgotten`: already, by `_forget`), its future, the observers, the finished
        event."""
        outcome = forgotten or outcome_of(error, job.id)
        with self.cond:
            if job.status in ENDED:
                return
            if job in self.claimed:
                self.claimed.remove(job)
            job.status = outcome.status
            job.outcome = outcome
            job.finished_at = time.time()
            self.cond.notify_all()
        runner = self.engine.runner
        if runner is not None:
            runner.release(job)
        self.engine.note_peak(job)
        if error is not None and forgotten is None:
            self.forget(job, error)
        line = end_line(job, outcome)
        job.log(line)
        job_log.info("job %s %s", job.id, line, extra={"prediction_id": job.id})
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)
        for observer in self.engine.observers:
            notify(observer, job)
        self.deliver(job.events.finished, job)

    def forget(self, job: Job, error: BaseException) -> Outcome:
        """Log what an operator needs of a failure, then let go of its frames."""
        outcome = outcome_of(error, job.id)
        if outcome.kind == "internal":  # the only failure whose traceback an operator needs
            job_log.error("job %s failed", job.id, exc_info=error)
        forget_frames(error)
        return outcome


def _downloading(job: Job) -> bool:
    return job.downloads and job.status in (JobStatus.QUEUED, JobStatus.PREPARING)
