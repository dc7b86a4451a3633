"""The synchronous APIs' jobs (DataCrunch, OpenAI's Images, AUTOMATIC1111's): each request waits
in this replica's memory for its images, answered when they are ready.

At most SDXL_QUEUE_SIZE of their jobs wait for the GPU (429 with Retry-After beyond), a client
that hangs up cancels its jobs, queued or running, and each job belongs to its caller (the API
key), whose progress and interrupt concern only its own jobs.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from fastapi import Request as HttpRequest

from sdxl.engine import Job, JobEvents
from sdxl.http.errors import ClientDisconnected, QueueFull, Unavailable, retry_after
from sdxl.http.outcomes import api_error, stopping_headers
from sdxl.http.service import ServerStatus, Service
from sdxl.http.settings import LOADING_RETRY_AFTER_S
from sdxl.images.result import Result
from sdxl.inputs.request import Request
from sdxl.inputs.surface import Surface

log = logging.getLogger(__name__)

FIRST_GUESS_S = 10.0  # Retry-After before any job has been timed


class SyncJobs:
    """The synchronous APIs' jobs on this replica, bounded, by caller."""

    def __init__(self, service: Service, capacity: int):
        self.service = service
        self.capacity = capacity
        self._lock = threading.Lock()
        self._waiting = 0
        self._mean_s: float | None = None
        self._by_caller: dict[str, list[Job]] = {}

    def submit(
        self,
        requests: list[Request],
        caller: str,
        events: JobEvents | None = None,
        preview_every: int = 0,
    ) -> list[Job]:
        """Queue one request's jobs (QueueFull when they do not fit; Unavailable when the
        server takes no request)."""
        check_accepting(self.service)
        with self._lock:
            room = self.capacity + (0 if self.service.engine.counts()["running"] else 1)
            if self._waiting + len(requests) > room:
                mean = FIRST_GUESS_S if self._mean_s is None else self._mean_s
                raise QueueFull(
                    f"{self._waiting} jobs are already waiting, the most this server queues is "
                    f"{self.capacity} (SDXL_QUEUE_SIZE); retry after the Retry-After seconds",
                    headers=retry_after(mean * max(1, self._waiting - self.capacity + 1)),
                )
            self._waiting += len(requests)
        jobs = [self._submit(r, caller, events or JobEvents(), preview_every) for r in requests]
        return jobs

    def _submit(self, request: Request, caller: str, events: JobEvents, every: int) -> Job:
        left = threading.Event()  # the job stopped waiting: it started, or it ended

        def stop_waiting(job: Job) -> None:
            with self._lock:
                if not left.is_set():
                    left.set()
                    self._waiting -= 1

        def started(job: Job) -> None:
            stop_waiting(job)
            if events.started is not None:
                events.started(job)

        def finished(job: Job) -> None:
            stop_waiting(job)
            with self._lock:
                jobs = self._by_caller.get(caller, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._by_caller.pop(caller, None)
                if job.run_seconds is not None and job.error is None:
                    old = self._mean_s if self._mean_s is not None else job.run_seconds
                    self._mean_s = 0.7 * old + 0.3 * job.run_seconds
            if events.finished is not None:
                events.finished(job)

        own = JobEvents(
            started=started,
            step=events.step,
            log=events.log,
            preview=events.preview,
            finished=finished,
        )
        job = self.service.engine.submit(request, events=own, preview_every=every, tenant=caller)
        with self._lock:
            if not job.done():
                self._by_caller.setdefault(caller, []).append(job)
        return job

    def of_caller(self, caller: str) -> list[Job]:
        """The caller's jobs not ended yet, in the order they were submitted."""
        with self._lock:
            return [job for job in self._by_caller.get(caller, []) if not job.done()]


def check_accepting(service: Service) -> None:
    status = service.status
    if status == ServerStatus.READY:
        return
    if status == ServerStatus.LOADING:
        raise Unavailable(
            "the model is still loading; retry in a few seconds (GET /health says when it "
            "is ready)",
            headers=retry_after(LOADING_RETRY_AFTER_S),
        )
    if status == ServerStatus.FAILED:
        raise Unavailable(f"the model is not available ({service.reason}); see the server log")
    raise Unavailable(
        "the server is shutting down and takes no new requests; send the request again",
        headers=stopping_headers(),
    )


async def _until_disconnected(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def until_done(http: HttpRequest, jobs: list[Job]) -> None:
    """Return once every job has ended; if the client hangs up first, its jobs are cancelled
    (queued or running) and ClientDisconnected raised."""
    done = asyncio.gather(
        *(asyncio.wrap_future(job.future) for job in jobs), return_exceptions=True
    )
    watcher = asyncio.ensure_future(_until_disconnected(http))
    try:
        finished, _ = await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        cancel(jobs, "the client went away")
        raise
    finally:
        watcher.cancel()
    if done not in finished:
        cancel(jobs, "the client disconnected before its images were ready")
        log.info("a client disconnected: its jobs %s were cancelled", [job.id for job in jobs])
        raise ClientDisconnected("the client disconnected before its images were ready")


def cancel(jobs: list[Job], reason: str) -> None:
    for job in jobs:
        job.cancel(reason)


def outcome(job: Job, surface: Surface) -> Result:
    """The job's result, or its failure (`sdxl.engine.outcome`) as the ApiError its kind is
    answered with (`sdxl.http.outcomes`), in `surface`'s names."""
    if job.outcome.succeeded:
        return job.result()
    raise api_error(job, surface) from job.error
