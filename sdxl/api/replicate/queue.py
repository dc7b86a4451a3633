"""The engine's queue with the Replicate API on: the DataCrunch endpoint's jobs wait in this
process's memory, Replicate's predictions in the store (they survive a restart and, on a shared
database, can be claimed by any replica). Each claim takes the older of the two heads.

A replica takes predictions from the store only while it is ready (not loading or broken; not
draining either on a shared store, where the other replicas take them), and on a shared store
claims at most one beyond the one it runs: it prepares (downloads) that one while the GPU works,
and leaves the rest to replicas with a free GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sdxl.api.replicate.store import Store
from sdxl.api.service import DRAINING, READY
from sdxl.engine import Job, MemoryQueue

log = logging.getLogger(__name__)

STORE_POLL_S = 0.25  # how often the store is asked for predictions another process created
STORE_RETRY_S = 2.0  # after the store could not be read, wait this long before asking again
SHARED_LOOKAHEAD = 1  # predictions a replica of a shared store claims beyond the running one


class SharedQueue:
    def __init__(self, store: Store, replica: str, job_for: Callable[[dict], Job]):
        self.store = store
        self.replica = replica
        self.job_for = job_for
        self.memory = MemoryQueue()
        self.claimed: dict[str, Job] = {}  # this replica's predictions, until they end
        # The server's status (sdxl.api.service): predictions are taken from the store only
        # while it is ready, or draining as the only replica of its store (SQLite), which
        # finishes what it accepted; a shared store's other replicas take them instead.
        self.status: Callable[[], str] = lambda: READY
        self.lookahead = SHARED_LOOKAHEAD if store.shared else None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._store_failed_at = 0.0

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
        row = self._claim_from_store(before=in_memory)
        if row is not None:
            job = self.job_for(row)
            with self._lock:
                self.claimed[job.id] = job
            return job
        return self.memory.claim(0) if in_memory is not None else None

    def _claim_from_store(self, before: float | None) -> dict | None:
        """The store's oldest prediction, claimed, if it is older than `before` and this
        replica takes predictions now. A store that cannot be read is left alone a while."""
        if not self._takes_from_store() or time.monotonic() - self._store_failed_at < STORE_RETRY_S:
            return None
        try:
            oldest = self.store.oldest_queued()
            if oldest is None or (before is not None and oldest > before):
                return None
            return self.store.claim(self.replica)
        except Exception as err:  # the database is away: memory jobs still run meanwhile
            self._store_failed_at = time.monotonic()
            log.warning("the prediction store cannot be read: %s", err)
            return None

    def _takes_from_store(self) -> bool:
        status = self.status()
        return status == READY or (status == DRAINING and not self.store.shared)

    def release(self, job_id: str) -> None:
        with self._lock:
            self.claimed.pop(job_id, None)

    def local(self, job_id: str) -> Job | None:
        with self._lock:
            return self.claimed.get(job_id)

    def local_ids(self) -> list[str]:
        with self._lock:
            return list(self.claimed)

    def discard(self, job: Job) -> bool:
        return self.memory.discard(job)

    def __len__(self) -> int:
        """Jobs waiting for this engine. The only replica of its store (SQLite) counts the
        store's predictions too, and so drains them on SIGTERM; on a shared store they wait
        for every replica and are counted once there (`Store.count_queued`)."""
        waiting = len(self.memory)
        if not self.store.shared:
            waiting += self.store.count_queued()
        return waiting
