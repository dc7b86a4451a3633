"""Stored trainings: the stored jobs of `sdxl.store.job_rows` (created queued, claimed in the
tenants' turns with the predictions, started, cancelled, ended, with the wake-ups they send),
bounded per tenant; their progress and latest checkpoint kept (the checkpoint's bytes in the
files backend); one that succeeds adds a version to its destination model
(`sdxl.store.destinations`), whose predictions then run with its weights.

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
from sdxl.store.tables import ENDED, of_tenant, trainings, versions

T = trainings.c


class Trainings(StoredJobs):
    table = trainings
    kind = "training"
    fields: ClassVar[dict[str, Any]] = {"step": 0}
    cleared: ClassVar[dict[str, Any]] = {"checkpoint_key": None, "input_files": None}

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
        when it was not `replica`'s to end. Its checkpoint and input archive go."""
        key = None
        if weights is not None:
            key = f"versions/{training_id}/trained_model.tar"
            self.blobs.put_file(key, weights)
        values = {"error": error, "metrics": metrics}
        if logs is not None:
            values["logs"] = logs

        def with_version(conn: sa.Connection, row) -> None:
            if key is not None:
                _add_version(conn, row, key)

        written = [key] if key else []
        ended = self._end(
            training_id, status, values, replica=replica, written=written, within=with_version
        )
        return None if ended is None else self.get(training_id)

    def _files_of(self, row) -> list[str | None]:
        """Its checkpoint (if it was handed back) and its copied inputs."""
        return [row.checkpoint_key, *(row.input_files or {}).values()]


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
