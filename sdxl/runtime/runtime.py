"""The job runtime: stored jobs (predictions and trainings) from their creation to their end,
beneath the APIs and above the engine.

An API checks a request in its own wire format and calls `create_prediction` or
`create_training` with the checked values; the runtime stores the job, queues it in the
tenants' turns (`SharedQueue`, which the engine takes its jobs from), runs it on the engine,
stores its progress and end, delivers its webhooks, and wakes the callers waiting for it
(`until_ended`). It also recovers what a restart or a dead replica left, beats for this replica
on a shared store, hands cancels to the jobs running here, and expires old rows.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl.inputs.request import Request
from sdxl.runtime.completions import Completions
from sdxl.runtime.events import Events, Render
from sdxl.runtime.heartbeats import Heartbeats
from sdxl.runtime.housekeeping import Housekeeping
from sdxl.runtime.kinds import CLAIMED_KINDS
from sdxl.runtime.shared_queue import SharedQueue
from sdxl.runtime.stored_predictions import StoredPredictions
from sdxl.runtime.stored_trainings import StoredTrainings
from sdxl.runtime.webhooks import Webhooks, new_secret
from sdxl.settings import FetchSettings
from sdxl.store.job_rows import ENDS, PREVIEWS
from sdxl.store.store import Store
from sdxl.store.tables import ANY

if TYPE_CHECKING:
    from sdxl.train.train_settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSettings:
    work_dir: Path  # a folder per training running here
    fetch: FetchSettings = field(default_factory=FetchSettings)  # URLs in jobs' inputs
    train: TrainSettings | None = None  # SDXL_MAX_TRAIN_*, ... (None: the defaults)
    public_url: str | None = None  # SDXL_PUBLIC_URL: the base of webhooks' URLs
    webhook_secret: str | None = None  # SDXL_WEBHOOK_SECRET (None: one kept in the store)
    replica_timeout_s: float = 30.0  # SDXL_REPLICA_TIMEOUT: a silent replica is dead after it
    store_poll_s: float = 5.0  # SDXL_STORE_POLL_S: the store looked at without a wake-up
    job_kinds: tuple[str, ...] = CLAIMED_KINDS  # SDXL_JOB_KINDS: what this replica claims
    served: frozenset[str] = frozenset()  # the served models (owner/name); others are trained
    # Steps between a running prediction's stored previews once someone reads them (0: none).
    preview_every: int = 0


def replica_name() -> str:
    host = socket.gethostname()[:40]  # the pod's name on Kubernetes
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class JobRuntime:
    """Every part of the stored jobs' life around `store`, with what a restart left behind
    settled. `renderers` render a stored row as the API's object, for webhooks (by kind)."""

    def __init__(self, store: Store, settings: RuntimeSettings, renderers: dict[str, Render]):
        self.store = store
        self.settings = settings
        self.replica = replica = replica_name()
        timeout = settings.replica_timeout_s
        heartbeats = Heartbeats(store, replica, timeout) if store.shared else None
        secret = settings.webhook_secret or store.setting("webhook_secret", new_secret)
        self.webhooks = Webhooks(secret, public_only=settings.fetch.public_only)
        self.completions = Completions()
        self.events = Events(store, self.webhooks, renderers, settings.public_url, self.completions)
        self.predictions = StoredPredictions(
            store,
            self.events,
            replica,
            settings.public_url,
            settings.served,
        )
        self.trainings = StoredTrainings(
            store, self.events, replica, settings.fetch, settings.work_dir, settings.train
        )
        self.completions.on_end(self.predictions.forget)
        store.wakeups.on(ENDS, self.completions.ended)
        store.wakeups.on(PREVIEWS, self._previews_wanted)
        self.queue = SharedQueue(
            store,
            replica,
            self.predictions.job_for,
            settings.store_poll_s,
            training_for=self.trainings.job_for,
            kinds=settings.job_kinds,
        )
        chores = (self.predictions.prune,)  # checked Requests of predictions not ours any more
        self.housekeeping = Housekeeping(
            store, self.queue, heartbeats, settings.store_poll_s, chores
        )
        self.housekeeping.recover()

    # ---- the APIs' calls ---------------------------------------------------------------
    def create_prediction(self, row: dict, request: Request) -> dict:
        """Store and queue a prediction (`row`: id, model, version, input as checked, webhook,
        its filter, origin, tenant); `request` is what the boundary checked, and what runs if
        this replica claims it. StoreFull when too many wait."""
        self.predictions.adopt(row, request)  # before it can be claimed
        try:
            with self.queue.writing():
                created = self.store.predictions.create(row)
                self.queue.created()
        except BaseException:
            self.predictions.forget(row["id"])
            raise
        if self.store.predictions.count() > self.store.limits.max_predictions:
            self.store.expire()  # over the count bound: the oldest ended ones go now
        return created

    def create_training(self, row: dict) -> dict:
        """Store and queue a training (its files already kept); StoreFull as above."""
        with self.queue.writing():
            created = self.store.trainings.create(row)
            self.queue.created()
        return created

    def cancel(self, kind: str, job_id: str) -> None:
        """Cancel a stored job: withdrawn if it still waits, stopped at its next step if it
        runs here; one claimed by another replica hears it through the store (CANCELS)."""
        rows = self.events.rows(kind)
        with self.queue.writing():
            withdrawn = rows.request_cancel(job_id)  # it was still queued
            if withdrawn:
                self.queue.withdrawn()
        if withdrawn:
            self.events.changed(kind, job_id, "completed")
            return
        job = self.queue.local(job_id)
        if job is not None:
            job.cancel()  # in its kind's words

    def want_previews(self, prediction_id: str) -> None:
        """Someone reads the prediction's previews: it makes them from its next step on, here
        or on the replica running it (told through the store)."""
        if not self._previews_wanted(prediction_id):
            self.store.predictions.want_previews(prediction_id)

    def _previews_wanted(self, prediction_id: str) -> bool:
        job = self.queue.local(prediction_id)
        if job is None or not self.settings.preview_every:
            return False
        if not job.preview_every:
            job.want_previews(self.settings.preview_every)
        return True

    async def until_ended(self, kind: str, job_id: str, seconds: float, tenant=ANY):
        """The job's row once it has ended, or as it is after `seconds` (None: not found)."""
        rows = self.events.rows(kind)
        return await self.completions.until_ended(job_id, seconds, lambda: rows.get(job_id, tenant))

    # ---- the server's life -------------------------------------------------------------
    def start(self) -> None:
        self.housekeeping.start()

    def close(self) -> None:
        """After the engine drained: the last results and checkpoints stored, their webhooks
        sent briefly, this replica gone from the replicas' table."""
        self.predictions.close()
        self.trainings.close()
        self.webhooks.close()
        self.housekeeping.stop()


__all__ = ["JobRuntime", "RuntimeSettings"]
