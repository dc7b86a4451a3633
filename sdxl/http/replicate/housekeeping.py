"""The store's upkeep, on threads of their own: what a restart left behind settled, old
predictions and files expired, and on a shared store heartbeats, dead replicas reaped and
cancels made on other replicas delivered to the jobs running here."""

from __future__ import annotations

import logging
import threading
import time

from sdxl.engine.shared_queue import SharedQueue
from sdxl.http.replicate.replicas import Replicas
from sdxl.store.store import Store

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 60.0
CANCEL_POLL_S = 0.25  # how often a replica of a shared store looks for cancels of its jobs
RESTART_MESSAGE = (
    "the server stopped while this prediction was running (it was restarted or it crashed); "
    "create the prediction again"
)


class Housekeeping:
    def __init__(self, store: Store, queue: SharedQueue, replicas: Replicas | None):
        self.store = store
        self.queue = queue
        self.replicas = replicas  # None: the only replica of its store (SQLite)

    def recover(self) -> None:
        """At start. The only replica of its store: the predictions it was running failed, the
        ones it had claimed are queued again. A replica of a shared store beats before it
        claims anything; the others settle the predictions of dead replicas."""
        if self.replicas is not None:
            self.replicas.beat()
            log.info("replica %s of a shared prediction store", self.replicas.name)
        else:
            failed, requeued = self.store.recover(RESTART_MESSAGE)
            if failed or requeued:
                log.info("after the restart: %d failed, %d queued again", failed, requeued)
        removed = self.store.expire()
        if removed:
            log.info("removed %d expired predictions and files", removed)

    def start(self) -> None:
        threading.Thread(target=self._expire_loop, name="sdxl-expire", daemon=True).start()
        if self.replicas is not None:
            threading.Thread(target=self._replica_loop, name="sdxl-replica", daemon=True).start()

    def _expire_loop(self) -> None:
        while True:
            time.sleep(EXPIRE_EVERY_S)
            try:
                self.store.expire()
            except Exception:
                log.exception("expiring old predictions failed")

    def _replica_loop(self) -> None:
        """Heartbeats, the other replicas watched, and cancels made on other replicas."""
        next_beat = 0.0
        while True:
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.replicas.beat_every_s
                    self.replicas.beat()
                    self.replicas.reap()
                self._cancels_from_elsewhere()
            except Exception as err:  # the database is away: try again at the next round
                log.warning("the shared prediction store cannot be reached: %s", err)
                self.replicas.forget()
                time.sleep(self.replicas.beat_every_s)
            time.sleep(CANCEL_POLL_S)

    def _cancels_from_elsewhere(self) -> None:
        for prediction_id in self.store.cancels_requested(self.queue.local_ids()):
            job = self.queue.local(prediction_id)
            if job is not None:
                job.cancel("the prediction was cancelled")

    def stop(self) -> None:
        """After the drain: this replica holds no claim, so it leaves the replicas' table."""
        if self.replicas is not None:
            try:
                self.replicas.leave()
            except Exception as err:
                log.warning("leaving the shared prediction store failed: %s", err)
