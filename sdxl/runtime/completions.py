"""Callers waiting for a stored job's end (`Prefer: wait`, a cancel that waits for the stop),
woken by the end itself instead of polling the store.

`ended(job_id)` may be called from any thread: by this process when it stored the job's end, and
by the store's wake-up (`sdxl.store.job_rows.ENDS`: LISTEN/NOTIFY on PostgreSQL, this process's
commits on SQLite) when another replica ended it. An empty id wakes every waiter (the wake-ups
reconnected: what was notified meanwhile was missed). A waiter reads the job once when it
starts and again at each wake-up for its id; it never reads on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from sdxl.store.tables import ENDED

log = logging.getLogger(__name__)


class Completions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._listeners: list[Callable[[str], None]] = []

    def on_end(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` at every end heard (a short call, on the caller's thread)."""
        self._listeners.append(listener)

    def ended(self, job_id: str) -> None:
        """The stored job `job_id` ended ("": any may have)."""
        with self._lock:
            if job_id:
                waiting = list(self._waiters.get(job_id, ()))
            else:
                waiting = [w for ws in self._waiters.values() for w in ws]
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits there
                loop.call_soon_threadsafe(event.set)
        for listener in self._listeners:
            try:
                listener(job_id)
            except Exception:  # a listener's bug must not keep the end from the others
                log.exception("a job-end listener failed")

    async def until_ended(self, job_id: str, seconds: float, read: Callable[[], dict | None]):
        """The job's row once it has ended, or as it is after `seconds`; `read()` reads it
        from the store (on a worker thread: it is a database call). None: it is gone."""
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(waiter)
        deadline = time.monotonic() + seconds
        try:
            while True:
                event.clear()
                row = await asyncio.to_thread(read)
                left = deadline - time.monotonic()
                if row is None or row["status"] in ENDED or left <= 0:
                    return row
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
        finally:
            with self._lock:
                mine = self._waiters.get(job_id)
                if mine is not None:
                    mine.discard(waiter)
                    if not mine:
                        del self._waiters[job_id]
