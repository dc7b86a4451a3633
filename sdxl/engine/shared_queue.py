"""The engine's queue when jobs are also stored: the synchronous APIs' jobs wait in this process's
memory, stored jobs (the Replicate API's predictions) in a database, where they survive a
restart and, on a shared database, can be claimed by any replica. Each claim takes the older of
the two heads.

The engine asks for stored jobs only while it is ready and not draining (`stored=True`). On a
shared store a replica claims at most one beyond the one it runs: it prepares (downloads) that
one while the GPU works, and leaves the rest to replicas with a free GPU. When the engine
stops, what it claimed and did not start goes back to the store (`release_claims`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sdxl.engine.jobs import Job
from sdxl.engine.queue import MemoryQueue

log = logging.getLogger(__name__)

STORE_POLL_S = 0.25  # how often the store is asked for jobs another process created
STORE_RETRY_S = 2.0  # after the store could not be read, wait this long before asking again
SHARED_LOOKAHEAD = 1  # stored jobs a replica of a shared store claims beyond the running one


class JobStore(Protocol):
    """What the queue needs of a store of jobs (`sdxl.api.replicate.store.Store`)."""

    shared: bool  # other replicas claim from it too

    def oldest_queued(self) -> float | None: ...  # when the oldest unclaimed job was created

    def claim(self, replica: str) -> dict | None: ...  # the oldest unclaimed row, now claimed

    def count_queued(self) -> int: ...

    def release(self, replica: str) -> int: ...  # its claimed, unstarted rows queued again


class SharedQueue:
    def __init__(self, store: JobStore, replica: str, job_for: Callable[[dict], Job]):
        self.store = store
        self.replica = replica
        self.job_for = job_for  # a claimed row -> its Job
        self.memory = MemoryQueue()
        self.claimed: dict[str, Job] = {}  # this replica's stored jobs, until they end
        self.lookahead = SHARED_LOOKAHEAD if store.shared else None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._store_failed_at = -STORE_RETRY_S

    def put(self, job: Job) -> None:
        self.memory.put(job)
        self._wake.set()

    def created(self) -> None:
        """A job was stored: look at the store now rather than at the next poll."""
        self._wake.set()

    def claim(self, timeout: float, *, stored: bool = True) -> Job | None:
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            job = self._claim_oldest(stored)
            if job is not None:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.wait(min(left, STORE_POLL_S))

    def _claim_oldest(self, stored: bool) -> Job | None:
        in_memory = self.memory.oldest()
        row = self._claim_from_store(before=in_memory) if stored else None
        if row is not None:
            job = self.job_for(row)
            with self._lock:
                self.claimed[job.id] = job
            job.future.add_done_callback(lambda _, job_id=job.id: self._release(job_id))
            return job
        return self.memory.claim(0) if in_memory is not None else None

    def _claim_from_store(self, before: float | None) -> dict | None:
        """The store's oldest job, claimed, if it is older than `before`. A store that cannot
        be read is left alone a while (memory jobs still run meanwhile)."""
        if time.monotonic() - self._store_failed_at < STORE_RETRY_S:
            return None
        try:
            oldest = self.store.oldest_queued()
            if oldest is None or (before is not None and oldest > before):
                return None
            return self.store.claim(self.replica)
        except Exception as err:  # the database is away
            self._store_failed_at = time.monotonic()
            log.warning("the prediction store cannot be read: %s", err)
            return None

    def release_claims(self) -> None:
        """The engine stops: the stored jobs claimed here and not started are queued again in
        the store (Engine.drain ends them here without writing their end)."""
        try:
            released = self.store.release(self.replica)
        except Exception as err:  # the database is away: another replica or the next start
            log.warning("the claimed predictions could not be handed back: %s", err)
            return
        if released:
            log.info("%d claimed predictions handed back to the store's queue", released)

    def _release(self, job_id: str) -> None:
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

    def waiting(self, *, stored: bool = True) -> int:
        """Jobs waiting for this engine. The only replica of its store (SQLite) counts the
        stored ones too; on a shared store they wait for every replica and are counted once
        there (`JobStore.count_queued`)."""
        waiting = self.memory.waiting()
        if stored and not self.store.shared:
            try:
                waiting += self.store.count_queued()
            except Exception as err:  # the database is away: what is in memory still counts
                log.warning("the prediction store cannot be read: %s", err)
        return waiting
