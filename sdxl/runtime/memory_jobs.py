"""The synchronous APIs' jobs (DataCrunch, OpenAI's Images, AUTOMATIC1111's): they wait in this
replica's memory, at most `capacity` of them behind the running one and at most `per_caller` of
one caller's, each its caller's (the API key's tenant: its progress and interrupt concern only
its own jobs).

An API awaits a job's own future (`asyncio.wrap_future`) and, when it shows progress, a
`Watch`: the job's previews and end handed to the API's event loop, thread-safely, by the
runtime's callbacks on the engine's delivery thread. No API code runs on an engine thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from sdxl.engine import Engine, GenerationJob, Job, JobEvents
from sdxl.inputs.request import Request

FIRST_GUESS_S = 10.0  # the wait guessed before any job has been timed


class NoRoom(Exception):
    """The jobs do not fit: `waiting` wait already, the most is `capacity` (`of_caller`: of
    the caller's own); `retry_after_s` is the guess of when room comes."""

    def __init__(self, waiting: int, capacity: int, retry_after_s: float, of_caller=False):
        whose = "of this caller's " if of_caller else ""
        super().__init__(f"{waiting} jobs {whose}wait already; the most is {capacity}")
        self.waiting, self.capacity, self.retry_after_s = waiting, capacity, retry_after_s
        self.of_caller = of_caller


def _takes_all() -> None:
    """The default `admit`: every submit is taken (while there is room)."""


class Watch:
    """A job's previews and end, for one event loop: `await watch.next()` gives
    ("preview", preview) items, then None once the job has ended."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()

    def _put(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    def preview(self, job: Job, preview: Any) -> None:
        self._put(("preview", preview))

    def ended(self, job: Job) -> None:
        self._put(None)

    async def next(self):
        return await self._items.get()


class MemoryJobs:
    """`admit()` raises when no job may be submitted now (the server is loading or stopping);
    `refuse(waiting, capacity, retry_after_s, of_caller)` is the error raised when the jobs do
    not fit, in all or (`of_caller`) of the caller's own (`per_caller`; None: no such bound)."""

    def __init__(
        self,
        engine: Engine,
        capacity: int,
        admit: Callable[[], None] = _takes_all,
        refuse: Callable[[int, int, float, bool], Exception] = NoRoom,
        per_caller: int | None = None,
    ):
        self.engine = engine
        self.capacity = capacity
        self.per_caller = per_caller
        self.admit = admit
        self.refuse = refuse
        self._lock = threading.Lock()
        self._waiting = 0
        self._waiting_of: dict[str, int] = {}  # of each caller's
        self._mean_s: float | None = None
        self._by_caller: dict[str, list[GenerationJob]] = {}

    def submit(
        self,
        requests: list[Request],
        caller: str,
        preview_every: int = 0,
        watch: Watch | None = None,
    ) -> list[GenerationJob]:
        """Queue one request's jobs (`admit`'s error when none is taken now, `refuse`'s when
        they do not fit); `watch` hands their previews and ends to the caller's event loop."""
        self.admit()
        count = len(requests)
        with self._lock:
            idle = 0 if self.engine.counts()["running"] else 1  # one may start at once
            mine = self._waiting_of.get(caller, 0)
            if self._waiting + count > self.capacity + idle:
                raise self._no_room(self._waiting, self.capacity, False)
            if self.per_caller is not None and mine + count > self.per_caller + idle:
                raise self._no_room(mine, self.per_caller, True)
            self._waiting += count
            self._waiting_of[caller] = mine + count
        return [self._submit(request, caller, preview_every, watch) for request in requests]

    def _no_room(self, waiting: int, capacity: int, of_caller: bool) -> Exception:
        mean = FIRST_GUESS_S if self._mean_s is None else self._mean_s
        ahead = max(1, waiting - capacity + 1)
        return self.refuse(waiting, capacity, mean * ahead, of_caller)

    def _submit(self, request: Request, caller: str, every: int, watch: Watch | None):
        left = threading.Event()  # the job stopped waiting: it started, or it ended

        def stop_waiting(job: Job) -> None:
            with self._lock:
                if not left.is_set():
                    left.set()
                    self._waiting -= 1
                    mine = self._waiting_of.pop(caller) - 1
                    if mine:
                        self._waiting_of[caller] = mine

        def finished(job: Job) -> None:
            stop_waiting(job)
            self._forget(job, caller)
            if watch is not None:
                watch.ended(job)

        events = JobEvents(
            started=stop_waiting,
            preview=None if watch is None else watch.preview,
            finished=finished,
        )
        job = self.engine.submit(request, events=events, preview_every=every, tenant=caller)
        with self._lock:
            if not job.done():
                self._by_caller.setdefault(caller, []).append(job)
        return job

    def _forget(self, job: Job, caller: str) -> None:
        with self._lock:
            jobs = self._by_caller.get(caller, [])
            if job in jobs:
                jobs.remove(job)
            if not jobs:
                self._by_caller.pop(caller, None)
            if job.run_seconds is not None and job.error is None:
                old = self._mean_s if self._mean_s is not None else job.run_seconds
                self._mean_s = 0.7 * old + 0.3 * job.run_seconds

    def of_caller(self, caller: str) -> list[GenerationJob]:
        """The caller's jobs not ended yet, in the order they were submitted."""
        with self._lock:
            return [job for job in self._by_caller.get(caller, []) if not job.done()]
