"""The store's upkeep, on threads of their own: what a restart left behind settled, old
predictions and files expired, and on a shared store heartbeats, dead replicas reaped and
cancels made on other replicas delivered to the jobs running here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sdxl.runtime.heartbeats import Heartbeats
from sdxl.runtime.shared_queue import SharedQueue
from sdxl.store.job_rows import CANCELS
from sdxl.store.store import Store

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 60.0
SWEEP_EVERY_S = 3600.0  # files no row names (a crash between a file and its row) are removed
RESTART_MESSAGE = (
    "the server stopped while this prediction was running (it was restarted or it crashed); "
    "create the prediction again"
)


class Housekeeping:
    def __init__(
        self,
        store: Store,
        queue: SharedQueue,
        replicas: Heartbeats | None,
        poll_s: float,
        chores: tuple[Callable[[], None], ...] = (),
    ):
        self.store = store
        self.queue = queue
        self.replicas = replicas  # None: the only replica of its store (SQLite)
        self.poll_s = poll_s  # SDXL_STORE_POLL_S: how often to look without a wake-up
        self.chores = chores  # run at every expiry round (EXPIRE_EVERY_S)
        store.wakeups.on(CANCELS, self._cancel_here)

    def recover(self) -> None:
        """At start. The only replica of its store: the predictions it was running failed, the
        ones it had claimed are queued again. A replica of a shared store beats before it
        claims anything; the others settle the predictions of dead replicas."""
        if self.replicas is not None:
            self.replicas.beat()
            log.info("replica %s of a shared job store", self.replicas.name)
        else:
            failed, requeued = self.store.replicas.recover(RESTART_MESSAGE)
            if failed or requeued:
                log.info("after the restart: %d failed, %d queued again", failed, requeued)
        removed = self.store.expire()
        if removed:
            log.info("removed %d expired jobs and files", removed)

    def start(self) -> None:
        self.store.wakeups.start()  # every channel is listened to by now
        threading.Thread(target=self._expire_loop, name="sdxl-expire", daemon=True).start()
        if self.replicas is not None:
            threading.Thread(target=self._replica_loop, name="sdxl-replica", daemon=True).start()

    def _expire_loop(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        while True:
            time.sleep(EXPIRE_EVERY_S)
            try:
                self.store.expire()
                for chore in self.chores:
                    chore()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
                    swept = self.store.expiry.sweep()
                    if swept:
                        log.info("removed %d files that no stored row names", swept)
            except Exception:
                log.exception("expiring old jobs and files failed")

    def _replica_loop(self) -> None:
        """Heartbeats, the other replicas watched, and cancels made on other replicas (their
        notifications deliver them at once; this looks again every `poll_s` as a safety net)."""
        replicas, next_beat, next_look = self.replicas, 0.0, 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + replicas.beat_every_s
                    replicas.beat()
                    replicas.reap()
                if now >= next_look:
                    next_look = now + self.poll_s
                    self._cancels_from_elsewhere()
            except Exception as err:  # the database is away: try again at the next round
                log.warning("the shared job store cannot be reached: %s", err)
                replicas.forget()
                time.sleep(replicas.beat_every_s)
            time.sleep(max(0.0, min(next_beat, next_look) - time.monotonic()))

    def _cancels_from_elsewhere(self) -> None:
        here = self.queue.local_ids()
        for job_id in self.store.predictions.cancels_requested(here):
            self._cancel_here(job_id)
        for job_id in self.store.trainings.cancels_requested(here):
            self._cancel_here(job_id)

    def _cancel_here(self, job_id: str) -> None:
        """A cancel of the stored job `job_id` reached the store: stop it if it runs here."""
        job = self.queue.local(job_id)
        if job is not None:
            job.cancel()  # in its kind's words

    def stop(self) -> None:
        """After the drain: this replica holds no claim, so it leaves the replicas' table."""
        self.store.wakeups.close()
        if self.replicas is not None:
            try:
                self.replicas.leave()
            except Exception as err:
                log.warning("leaving the shared job store failed: %s", err)
