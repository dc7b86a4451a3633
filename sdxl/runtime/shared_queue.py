"""The engine's queue when jobs are also stored: the synchronous APIs' jobs wait in this process's
memory, stored jobs (the Replicate API's predictions and trainings) in a database, where they
survive a restart and, on a shared database, can be claimed by any replica. A replica runs at
most one training at a time: it claims a training only while those it holds are all still
being prepared (their archive fetched and read), none of them the same tenant's, and fewer than
TRAININGS_PREPARED_AT_ONCE; so a training stuck in a long archive read holds back no other
tenant's. It claims only the kinds of stored jobs it is set to take (SDXL_JOB_KINDS: a serving
pool and a training pool on one database).

Tenants take turns: each claim takes the oldest job of the tenant served least recently, in
memory or in the store (where "served" is when a replica last claimed one of its predictions,
so the turns hold across replicas); within a tenant, first in, first out. With one tenant, each
claim simply takes the older of the two heads.

The engine asks for stored jobs only while it is ready and not draining (`stored=True`), and
claims at most one beyond the one it runs (`sdxl.engine.lanes`): it prepares that one while the
GPU works, and leaves the rest to replicas with a free GPU. When the engine
stops, what it claimed and did not start goes back to the store (`release_claims`). A claim
whose answer was lost (the database went away after committing it) is handed back once the store
answers again, so it cannot stay claimed by a replica that never knew it had it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sdxl.engine import Job, JobStatus, MemoryQueue
from sdxl.engine.lanes import TRAININGS_PREPARED_AT_ONCE
from sdxl.engine.queue import never
from sdxl.runtime.kinds import TRAINING
from sdxl.store.job_rows import JOBS

log = logging.getLogger(__name__)

STORE_POLL_S = 5.0  # without a wake-up, the store is looked at this often (a safety net)
# A replica whose GPU is busy claims a stored job ahead only once it has waited this long, so
# that a replica with a free GPU, woken by the same notification, takes it first.
AHEAD_GRACE_S = 2.0
MEMORY = "memory"  # where a turn's head waits (or in the store: a kind of stored job)
STORE_RETRY_S = 2.0  # after the store could not be read, wait this long before asking again


class JobStore(Protocol):
    """What the queue needs of a store of jobs (`sdxl.store.store.Store`): `shared` (other
    replicas claim from it too); `predictions.turns()` (per tenant: .tenant, .created_at,
    .served_at, .waiting, .kind) and `predictions.claim(replica, tenant)` (its oldest,
    claimed); the same of `trainings`;
    `replicas.release(replica, since=, keep=)` (unstarted, queued again); `wakeups.on(JOBS,
    listener)` (the store changed)."""

    shared: bool
    predictions: Any
    trainings: Any
    replicas: Any
    wakeups: Any


class SharedQueue:
    def __init__(
        self,
        store: JobStore,
        replica: str,
        job_for: Callable[[dict], Job],
        poll_s: float = STORE_POLL_S,
        training_for: Callable[[dict], Job] | None = None,
        kinds: tuple[str, ...] = ("predictions", "trainings"),
    ):
        self.store = store
        self.poll_s = poll_s
        self.replica = replica
        self.job_for = job_for  # a claimed prediction's row -> its Job
        self.training_for = training_for  # a claimed training's row -> its Job
        self.kinds = kinds if training_for is not None else ("predictions",)
        self._trainings: dict[str, Job] = {}  # the trainings this replica holds, by id
        self.memory = MemoryQueue()
        self.claimed: dict[str, Job] = {}  # this replica's stored jobs, until they end
        # Stored jobs waiting, as this replica last saw them (its turns, creates and claims):
        # counted without a database call, so that the event loop may ask (`waiting`).
        self._stored_waiting = 0
        # This process's writes that queue or withdraw a stored job (`writing`): those under way,
        # and how many ended. A read of the turns that overlaps one may or may not have seen its
        # commit, so it leaves the count as the writes moved it (and is read again next time).
        self._writes_under_way = 0
        self._writes_done = 0
        self._wake = threading.Event()  # a job was put in memory, or the store changed
        # The store's turns as last read: read again only when the store changed (NOTIFY on
        # PostgreSQL, this process's commits on SQLite), after this replica claimed from it,
        # or every `poll_s` (a safety net), never on every claim.
        self._turns: list = []
        self._stale = True
        self._young_until: float | None = None  # when the heads left to others may be taken
        self._looked_at = -poll_s
        store.wakeups.on(JOBS, lambda _payload: self._store_changed())
        self._lock = threading.Lock()
        self._store_failed_at = -STORE_RETRY_S
        self._lost_claim_since: float | None = None  # a claim failed: it may be ours all the same
        # When this replica last took a job of each tenant (the store knows its own claims;
        # memory jobs only this replica knows).
        self._served: dict[str | None, float] = {}

    def put(self, job: Job) -> None:
        self.memory.put(job)
        self._wake.set()

    def wake(self) -> None:
        """The engine's state changed (JobQueue.wake): the claim under way looks again."""
        self._wake.set()

    def created(self) -> None:
        """A job was stored here (its notification wakes the claim thread too)."""
        with self._lock:
            self._stored_waiting += 1
        self._store_changed()

    def _store_changed(self) -> None:
        self._stale = True
        self._wake.set()

    def withdrawn(self) -> None:
        """A stored job that waited was cancelled before anyone claimed it."""
        with self._lock:
            self._stored_waiting = max(0, self._stored_waiting - 1)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a store write that may queue or withdraw a job, and its `created` or
        `withdrawn` call: a read of the turns meanwhile does not overwrite the count."""
        with self._lock:
            self._writes_under_way += 1
        try:
            yield
        finally:
            with self._lock:
                self._writes_under_way -= 1
                self._writes_done += 1

    def claim(self, timeout: float, *, stored=True, ahead=False, stale=never) -> Job | None:
        """`ahead`: the engine runs a job already (stored jobs that just arrived are left a
        moment for replicas with a free GPU)."""
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            self._young_until = None
            job = self._claim_oldest(stored, ahead and self.store.shared)
            if job is not None:
                return job
            if stale():  # what the engine asks for changed: it asks again
                return None
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return None
            until_old = self.poll_s if self._young_until is None else self._young_until - now
            until_retry = self._store_failed_at + STORE_RETRY_S - now  # the store failed: then
            waits = (left, self.poll_s, until_old) + ((until_retry,) if until_retry > 0 else ())
            self._wake.wait(max(0.0, min(waits)))

    def _claim_oldest(self, stored: bool, leave_young: bool = False) -> Job | None:
        """The next job: the oldest of the tenant served least recently (tenants in turn),
        whether it waits in memory or in the store (`leave_young`: only stored ones that have
        waited AHEAD_GRACE_S)."""
        for _ in range(3):  # a stored head another replica took meanwhile: look again
            memory = self.memory.heads()
            turns = self._stored_turns() if stored else []
            if leave_young:
                turns = self._old_enough(turns)
            pick = _next_turn(memory, turns, self._served)
            if pick is None:
                return None
            tenant, source = pick
            if source == MEMORY:
                job = memory[tenant]
                if self.memory.discard(job):  # still there (not cancelled meanwhile)
                    self._served[tenant] = time.time()
                    return job
                continue
            attempted_at = time.time()
            row = self._claim_from_store(tenant, source)
            self._stale = True  # claimed, or another replica took that head: read again
            if row is not None:
                self._served[tenant] = time.time()
                return self._adopt(row, source, attempted_at)
        return None

    def _old_enough(self, turns: list) -> list:
        """The turns whose head has waited AHEAD_GRACE_S; the others are looked at again once
        they have (`_young_until`, on this replica's clock)."""
        now = time.time()
        young = [turn.created_at for turn in turns if now - turn.created_at < AHEAD_GRACE_S]
        if young:
            self._stale = True
            self._young_until = time.monotonic() + AHEAD_GRACE_S - (now - min(young))
        return [turn for turn in turns if now - turn.created_at >= AHEAD_GRACE_S]

    def _adopt(self, row: dict, kind: str, claimed_since: float) -> Job | None:
        """The claimed row's job (None: it could not be made, and the claim goes back to the
        queue once the store answers)."""
        try:
            job = (self.training_for if kind == TRAINING else self.job_for)(row)
        except Exception as err:  # the store went away while reading what the job needs
            if self._lost_claim_since is None:
                self._lost_claim_since = claimed_since
            self._store_failed(err)
            return None
        with self._lock:
            self.claimed[job.id] = job
            if kind == TRAINING:
                self._trainings[job.id] = job
            self._stored_waiting = max(0, self._stored_waiting - 1)
        job.future.add_done_callback(lambda _, job_id=job.id: self._release(job_id))
        if not row["cancel_requested"] and self._cancel_requested(job.id, kind):
            job.cancel()  # cancelled between the claim and now: no notification found it here
        return job

    def _cancel_requested(self, job_id: str, kind: str) -> bool:
        rows = self.store.trainings if kind == TRAINING else self.store.predictions
        try:
            return job_id in rows.cancels_requested([job_id])
        except Exception:  # the store is away: a cancel made meanwhile reaches it later
            return False

    def _stored_turns(self) -> list:
        """The store's tenants in waiting (`Predictions.turns`), read again only when they may
        have changed. A store that cannot be read is left alone a while (memory jobs still run
        meanwhile)."""
        now = time.monotonic()
        if now - self._store_failed_at < STORE_RETRY_S:
            return []
        if not self._stale and now - self._looked_at < self.poll_s:
            return self._claimable(self._turns)
        self._stale, self._looked_at = False, now
        with self._lock:
            writes_before = None if self._writes_under_way else self._writes_done
        try:
            if self._lost_claim_since is not None:
                self._hand_back_lost_claims()
            turns = self.store.predictions.turns() if "predictions" in self.kinds else []
            if "trainings" in self.kinds:
                turns += self.store.trainings.turns()
        except Exception as err:  # the database is away
            self._stale = True
            self._store_failed(err)
            return []
        with self._lock:
            if writes_before == self._writes_done and not self._writes_under_way:
                self._stored_waiting = sum(turn.waiting for turn in turns)
            else:  # it raced a create or a cancel here: counted by those, read again next time
                self._stale = True
        self._turns = turns
        return self._claimable(turns)

    def _claimable(self, turns: list) -> list:
        """Trainings wait while this replica holds one that is prepared (ready or running),
        one of the same tenant, or TRAININGS_PREPARED_AT_ONCE being prepared."""
        with self._lock:
            held = list(self._trainings.values())
        preparing = (JobStatus.QUEUED, JobStatus.PREPARING)
        if len(held) >= TRAININGS_PREPARED_AT_ONCE or any(
            job.status not in preparing for job in held
        ):
            return [turn for turn in turns if turn.kind != TRAINING]
        tenants = {job.tenant for job in held}
        return [turn for turn in turns if turn.kind != TRAINING or turn.tenant not in tenants]

    def _claim_from_store(self, tenant: str | None, kind: str) -> dict | None:
        attempted_at = time.time()  # the store stamps claimed_at later than this
        rows = self.store.trainings if kind == TRAINING else self.store.predictions
        try:
            return rows.claim(self.replica, tenant)
        except Exception as err:  # it may have been committed all the same
            if self._lost_claim_since is None:
                self._lost_claim_since = attempted_at
            self._store_failed(err)
            return None

    def _hand_back_lost_claims(self) -> None:
        """Queue again what this replica claimed since its first failed claim and does not hold
        (the claim thread's own: no claim of its own is under way meanwhile)."""
        released = self.store.replicas.release(
            self.replica, since=self._lost_claim_since, keep=self.local_ids()
        )
        self._lost_claim_since = None
        if released:
            log.info("%d stored jobs claimed while the store was away queued again", released)

    def _store_failed(self, err: Exception) -> None:
        self._store_failed_at = time.monotonic()
        log.warning("the job store cannot be read: %s", err)

    def release_claims(self) -> None:
        """The engine stops: the stored jobs claimed here and not started are queued again in
        the store (Engine.drain ends them here without writing their end)."""
        try:
            released = self.store.replicas.release(self.replica)
        except Exception as err:  # the database is away: another replica or the next start
            log.warning("the claimed stored jobs could not be handed back: %s", err)
            return
        if released:
            log.info("%d claimed stored jobs handed back to the store's queue", released)

    def _release(self, job_id: str) -> None:
        with self._lock:
            self.claimed.pop(job_id, None)
            self._trainings.pop(job_id, None)
        self._wake.set()  # a training may be claimed again

    def local(self, job_id: str) -> Job | None:
        with self._lock:
            return self.claimed.get(job_id)

    def local_ids(self) -> list[str]:
        with self._lock:
            return list(self.claimed)

    def discard(self, job: Job) -> bool:
        return self.memory.discard(job)

    def waiting(self, *, stored: bool = True) -> int:
        """Jobs waiting for this engine, without a database call. The only replica of its
        store (SQLite) counts the stored ones too, as it last saw them; on a shared store they
        wait for every replica and are counted once there (`JobStore.count_queued`)."""
        waiting = self.memory.waiting()
        if stored and not self.store.shared:
            with self._lock:
                waiting += self._stored_waiting
        return waiting


def _next_turn(memory: dict, turns: list, served: dict) -> tuple[str | None, str] | None:
    """(tenant, where its job waits: MEMORY, or the store's "prediction" or "training") for
    the next job: the tenant served least recently (never served first), ties to the oldest
    head; within the tenant, the oldest of its heads. None when nothing waits."""
    stored: dict[str | None, list] = {}
    for turn in turns:
        stored.setdefault(turn.tenant, []).append(turn)
    candidates = []
    for tenant in set(memory) | set(stored):
        mine = stored.get(tenant, [])
        stamps = [served.get(tenant), *(turn.served_at for turn in mine)]
        last = max((t for t in stamps if t is not None), default=None)
        heads = [(job.created_at, MEMORY) for job in [memory.get(tenant)] if job is not None]
        heads += [(turn.created_at, turn.kind) for turn in mine]
        created, source = min(heads)
        candidates.append(((last is not None, last or 0.0, created), tenant, source))
    if not candidates:
        return None
    _, tenant, source = min(candidates, key=lambda c: c[0])
    return tenant, source
