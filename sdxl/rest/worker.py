"""One generation at a time, in arrival order, with a bounded number of requests waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

FIRST_GUESS_S = 10.0  # Retry-After before any job has been timed


class QueueFullError(Exception):
    """No room: `retry_after` is an estimate, in seconds, of when there will be."""

    def __init__(self, waiting: int, retry_after: float):
        super().__init__(f"{waiting} requests are already waiting")
        self.waiting = waiting
        self.retry_after = retry_after


class WorkQueue:
    """Runs submitted functions one at a time on a single worker thread, first in first out.

    At most `capacity` jobs wait behind the running one; `submit` raises QueueFullError
    beyond that. The event loop only awaits: it never runs a job itself.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-generate")
        self._lock = threading.Lock()
        self._pending = 0  # accepted and not finished: waiting + running
        self._running = 0
        self._mean_s: float | None = None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "queued": self._pending - self._running}

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0

    def _estimate_locked(self) -> float:
        """Seconds until a slot frees up, from the mean duration of recent jobs."""
        mean = FIRST_GUESS_S if self._mean_s is None else self._mean_s
        return mean * max(1, self._pending - self.capacity)

    async def submit(self, job: Callable[[], T]) -> T:
        with self._lock:
            if self._pending >= self.capacity + 1:
                waiting = self._pending - self._running
                raise QueueFullError(waiting, self._estimate_locked())
            self._pending += 1
        try:
            future = self._executor.submit(self._run, job)
        except RuntimeError:  # executor shut down
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _run(self, job: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
        started = time.perf_counter()
        try:
            return job()
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._running -= 1
                old = elapsed if self._mean_s is None else self._mean_s
                self._mean_s = 0.7 * old + 0.3 * elapsed

    def _finished(self, future: Future | None) -> None:
        """Runs once per accepted job: done, failed, or cancelled before it started."""
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Wait for the accepted jobs to finish, then stop the worker thread."""
        self._executor.shutdown(wait=True)
