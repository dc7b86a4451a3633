"""The engine's queue with the Replicate API on: the DataCrunch endpoint's jobs wait in this
process's memory, Replicate's predictions in the store (they survive a restart and, on a shared
database, can be claimed by any replica). Each claim takes the older of the two heads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sdxl.api.replicate.store import Store
from sdxl.engine import Job, MemoryQueue

STORE_POLL_S = 0.25  # how often the store is asked for predictions another process created


class SharedQueue:
    def __init__(self, store: Store, replica: str, job_for: Callable[[dict], Job]):
        self.store = store
        self.replica = replica
        self.job_for = job_for
        self.memory = MemoryQueue()
        self.claimed: dict[str, Job] = {}  # this replica's predictions, until they end
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def put(self, job: Job) -> None:
        self.memory.put(job)
        self._wake.set()

    def created(self) -> None:
        """A prediction was stored: look at the store now rather than at the next poll."""
        self._wake.set()

    def claim(self, timeout: float) -> Job | None:
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            job = self._claim_oldest()
            if job is not None:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.wait(min(left, STORE_POLL_S))

    def _claim_oldest(self) -> Job | None:
        in_memory = self.memory.oldest()
        in_store = self.store.oldest_queued()
        if in_store is not None and (in_memory is None or in_store <= in_memory):
            row = self.store.claim(self.replica)
            if row is not None:
                job = self.job_for(row)
                with self._lock:
                    self.claimed[job.id] = job
                return job
        return self.memory.claim(0) if in_memory is not None else None

    def release(self, job_id: str) -> None:
        with self._lock:
            self.claimed.pop(job_id, None)

    def local(self, job_id: str) -> Job | None:
        with self._lock:
            return self.claimed.get(job_id)

    def discard(self, job: Job) -> bool:
        return self.memory.discard(job)

    def __len__(self) -> int:
        return len(self.memory) + self.store.count_queued()
