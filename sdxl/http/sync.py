"""The synchronous APIs' jobs (DataCrunch, OpenAI's Images, AUTOMATIC1111's): each request waits
in this replica's memory for its images, answered when they are ready.

At most SDXL_QUEUE_SIZE of their jobs wait for the GPU, and at most SDXL_QUEUE_SIZE_PER_KEY of
one key's (by default half of them when the server has several keys; 429 with Retry-After
beyond either), a client that hangs up cancels its jobs, queued or running, and each job
belongs to its caller (the API key), whose progress and interrupt concern only its own jobs.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request as HttpRequest

from sdxl.engine import Job
from sdxl.http.errors import ClientDisconnected, QueueFull, Unavailable, retry_after
from sdxl.http.outcomes import api_error, stopping_headers
from sdxl.http.server_settings import LOADING_RETRY_AFTER_S
from sdxl.http.service import ServerStatus, Service
from sdxl.images.result import Result
from sdxl.inputs.surface import Surface
from sdxl.runtime.memory_jobs import MemoryJobs

log = logging.getLogger(__name__)


class SyncJobs(MemoryJobs):
    """The synchronous APIs' jobs on this replica (`sdxl.runtime.memory_jobs`), taken only
    while the server takes requests, and a 429 with Retry-After when they do not fit."""

    def __init__(self, service: Service, capacity: int, per_key: int | None = None):
        super().__init__(
            service.engine, capacity, lambda: check_accepting(service), queue_full, per_key
        )
        self.service = service


def queue_full(waiting: int, capacity: int, retry_after_s: float, of_key: bool) -> QueueFull:
    if of_key:
        most = (
            f"{waiting} jobs of this API key are already waiting, the most one key may queue "
            f"is {capacity} (SDXL_QUEUE_SIZE_PER_KEY; by default half of SDXL_QUEUE_SIZE when "
            "the server has several keys)"
        )
    else:
        most = (
            f"{waiting} jobs are already waiting, the most this server queues is {capacity} "
            "(SDXL_QUEUE_SIZE)"
        )
    return QueueFull(
        f"{most}; retry after the Retry-After seconds", headers=retry_after(retry_after_s)
    )


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
