"""Stored trainings: the stored jobs of `sdxl.store.job_rows` (created queued, claimed in the
tenants' turns with the predictions, started, cancelled, ended, with the wake-ups they send),
bounded per tenant; their progress and latest checkpoint kept (the checkpoint's bytes in the
files backend); one that succeeds adds a version to its destination model
(`sdxl.store.destinations`), whose predictions then run with its weights. One that stopped
before its end (cancelled, or failed after a step) keeps its last checkpoint for its owner to go
on from, the newest few of each tenant's (as many as it may run trainings at once).

A training whose replica stops, dies or restarts is queued again with its last checkpoint, for
any replica to go on from (`hand_back`, `requeue`): a training is never failed for its
replica's death.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.errors import StoreFull
from sdxl.store.job_rows import StoredJobs
from sdxl.store.tables import ENDED, StoredStatus, of_tenant, trainings, versions

T = trainings.c
STOPPED = (StoredStatus.CANCELED, StoredStatus.FAILED)  # ended early: their checkpoint is kept
KEPT_PER_TENANT = 2  # stopped trainings' checkpoints kept per tenant without a training cap


class Trainings(StoredJobs):
    table = trainings
    kind = "training"
    fields: ClassVar[dict[str, Any]] = {"step": 0}
    # A stopped training's checkpoint stays (a succeeded one's goes: `finish`).
    cleared: ClassVar[dict[str, Any]] = {"input_files": None}

    def __init__(self, db: Database, blobs: Blobs, max_per_tenant: int | None = None):
        super().__init__(db, blobs)
        self.max_per_tenant = max_per_tenant  # SDXL_MAX_TRAININGS_PER_KEY: queued or running

    def _check_room(self, conn: sa.Connection, tenant: str | None) -> None:
        """StoreFull when `tenant` has too many trainings queued or running."""
        if self.max_per_tenant is None:
            return
        alive = sa.select(sa.func.count()).where(T.status.not_in(ENDED))
        mine = conn.scalar(alive.where(of_tenant(trainings, tenant)))
        if mine >= self.max_per_tenant:
            raise StoreFull(mine, per_tenant=True)

    def counts(self) -> dict[str, int]:
        """Trainings by status (queued ones as "starting"), for the metrics."""
        query = sa.select(T.status, sa.func.count()).group_by(T.status)
        with self.db.read() as conn:
            return {status: count for status, count in conn.execute(query)}

    # ---- running, while its replica holds it ---------------------------------------------
    def progress(self, training_id: str, replica: str, **values) -> bool:
        """Its logs, step and losses so far, while `replica` holds it."""
        with self.db.tx() as conn:
            return bool(conn.execute(self._held(training_id, replica).values(**values)).rowcount)

    def keep_checkpoint(self, training_id: str, replica: str, step: int, path: Path) -> bool:
        """The training's latest checkpoint (the file at `path`, replacing the one before),
        while `replica` holds it: the bytes first, then the row that names them."""
        key = f"trainings/{training_id}/checkpoint-{step}.tar"
        self.blobs.put_file(key, path)
        with self.db.tx() as conn:
            old = conn.scalar(sa.select(T.checkpoint_key).where(T.id == training_id))
            kept = conn.execute(
                self._held(training_id, replica).values(checkpoint_key=key, checkpoint_step=step)
            ).rowcount
        if not kept:
            self.blobs.delete([key])
            return False
        if old and old != key:
            self.blobs.delete([old])
        return True

    def hand_back(self, training_id: str, replica: str) -> bool:
        """`replica` stops: the training waits in the queue again, with its checkpoint."""
        with self.db.tx() as conn:
            return bool(self.requeue(conn, [T.id == training_id, T.claimed_by == replica]))

    def _held(self, training_id: str, replica: str) -> sa.Update:
        return trainings.update().where(
            T.id == training_id, T.claimed_by == replica, T.status.not_in(ENDED)
        )

    # ---- ended ----------------------------------------------------------------------------
    def finish(
        self,
        training_id: str,
        status: str,
        *,
        replica: str,
        error: str | None = None,
        logs: str | None = None,
        metrics: dict | None = None,
        weights: Path | None = None,
    ) -> dict | None:
        """End a training; a succeeded one's `weights` (its trained_model.tar) become a new
        version of its destination, named by the training's id. The training as stored, or None
        when it was not `replica`'s to end. Its input archive goes, and its checkpoint unless it
        stopped early (cancelled or failed): then its owner may go on from it."""
        key = None
        if weights is not None:
            key = f"versions/{training_id}/trained_model.tar"
            self.blobs.put_file(key, weights)
        values = {"error": error, "metrics": metrics}
        if logs is not None:
            values["logs"] = logs
        if status not in STOPPED:
            values["checkpoint_key"] = None

        def with_version(conn: sa.Connection, row) -> None:
            if key is not None:
                _add_version(conn, row, key)

        written = [key] if key else []
        before = self._end(
            training_id, status, values, replica=replica, written=written, within=with_version
        )
        if before is None:
            return None
        if status in STOPPED:
            self._keep_newest_checkpoints(before.tenant)
        else:
            self.blobs.delete([before.checkpoint_key])
        return self.get(training_id)

    def request_cancel(self, job_id: str) -> bool:
        """As for any job; a queued training that was handed back keeps its checkpoint."""
        done = super().request_cancel(job_id)
        if done:
            row = self.get(job_id)
            if row is not None:
                self._keep_newest_checkpoints(row["tenant"])
        return done

    def _files_of(self, row) -> list[str | None]:
        """Its copied inputs (its checkpoint: see `finish`)."""
        return list((row.input_files or {}).values())

    # ---- stopped: the checkpoint kept for its owner ------------------------------------------
    def _keep_newest_checkpoints(self, tenant: str | None) -> None:
        """Only the newest stopped trainings of `tenant` keep their checkpoints (as many as
        the tenant may run trainings at once), so that one tenant cannot fill the files
        backend by starting and cancelling trainings."""
        keep = self.max_per_tenant or KEPT_PER_TENANT
        stopped = [T.status.in_(STOPPED), T.checkpoint_key.is_not(None)]
        with self.db.tx() as conn:
            older = conn.execute(
                sa.select(T.id, T.checkpoint_key)
                .where(of_tenant(trainings, tenant), *stopped)
                .order_by(T.completed_at.desc(), T.number.desc())
                .offset(keep)
            ).all()
            if older:
                ids = [row.id for row in older]
                conn.execute(
                    trainings.update().where(T.id.in_(ids), *stopped).values(checkpoint_key=None)
                )
        self.blobs.delete(row.checkpoint_key for row in older)  # committed: no row names them


def _add_version(conn: sa.Connection, training, key: str) -> None:
    owner, name = training.destination.split("/", 1)
    conn.execute(
        versions.insert().values(
            id=training.id,  # one version per training: its id names it
            owner=owner,
            name=name,
            training_id=training.id,
            weights_key=key,
            created_at=time.time(),
        )
    )
    output = {"version": f"{training.destination}:{training.id}"}
    conn.execute(trainings.update().where(T.id == training.id).values(output=output))
