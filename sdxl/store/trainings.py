"""Stored trainings: created queued, claimed by one replica (the tenants in turn with their
predictions), started, their progress and latest checkpoint kept (the checkpoint's bytes in
the files backend), ended; one that succeeds adds a version to its destination model
(`sdxl.store.destinations`), whose predictions then run with its weights.

A training whose replica stops, dies or restarts is queued again with its last checkpoint, for
any replica to go on from: a training is never failed for its replica's death.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.errors import StoreFull
from sdxl.store.predictions import CANCELS, JOBS, Turn, _served, turns_of
from sdxl.store.tables import (
    ANY,
    ENDED,
    QUEUED,
    RUNNING,
    PredictionStatus,
    of_tenant,
    trainings,
    unclaimed,
    versions,
)

T = trainings.c


class Trainings:
    def __init__(self, db: Database, blobs: Blobs, max_per_tenant: int | None = None):
        self.db = db
        self.blobs = blobs
        self.max_per_tenant = max_per_tenant  # SDXL_MAX_TRAININGS_PER_KEY: queued or running

    # ---- created, read ------------------------------------------------------------------
    def create(self, row: dict) -> dict:
        """Insert a queued training; StoreFull when its tenant has too many queued or running."""
        alive = sa.select(sa.func.count()).where(
            T.status.not_in(ENDED), of_tenant(trainings, row.get("tenant"))
        )
        with self.db.tx() as conn:
            if self.max_per_tenant is not None:
                mine = conn.scalar(alive)
                if mine >= self.max_per_tenant:
                    raise StoreFull(mine, per_tenant=True)
            row = {**row, "status": QUEUED, "logs": "", "created_at": time.time(), "step": 0}
            conn.execute(trainings.insert().values(**row))
            self.db.notify(conn, JOBS)
        return self.get(row["id"])

    def get(self, training_id: str, tenant: str | None = ANY) -> dict | None:
        query = sa.select(trainings).where(T.id == training_id)
        if tenant is not ANY:
            query = query.where(of_tenant(trainings, tenant))
        with self.db.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def page(self, before: int | None, size: int, tenant: str | None = ANY) -> list[dict]:
        """Newest first, as predictions are paged."""
        query = sa.select(trainings).order_by(T.number.desc()).limit(size)
        if before is not None:
            query = query.where(T.number < before)
        if tenant is not ANY:
            query = query.where(of_tenant(trainings, tenant))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        """Trainings by status (queued ones as "starting"), for the metrics."""
        query = sa.select(T.status, sa.func.count()).group_by(T.status)
        with self.db.read() as conn:
            return {status: count for status, count in conn.execute(query)}

    # ---- claimed ------------------------------------------------------------------------
    def turns(self) -> list[Turn]:
        """Each tenant with trainings queued and unclaimed, as `Predictions.turns`."""
        return turns_of(self.db, trainings, "training")

    def claim(self, replica: str, tenant: str | None = ANY) -> dict | None:
        """The oldest queued training (of `tenant`) nobody has claimed, now `replica`'s."""
        where = unclaimed(trainings)
        if tenant is not ANY:
            where.append(of_tenant(trainings, tenant))
        for _ in range(10):  # another replica may win the race for a row: take the next
            with self.db.tx() as conn:
                head = conn.execute(
                    sa.select(T.number, T.tenant)
                    .where(*where)
                    .order_by(T.number)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if head is None:
                    return None
                now = time.time()
                won = conn.execute(
                    trainings.update()
                    .where(T.number == head.number, T.claimed_by.is_(None))
                    .values(claimed_by=replica, claimed_at=now)
                ).rowcount
                if won:
                    _served(conn, head.tenant, now)
                    row = conn.execute(sa.select(trainings).where(T.number == head.number))
                    return dict(row.first()._mapping)
        return None

    def started(self, training_id: str, replica: str) -> bool:
        """Mark it running while `replica` holds it (a resumed one keeps its first start)."""
        first = sa.func.coalesce(T.started_at, time.time())
        with self.db.tx() as conn:
            return bool(
                conn.execute(
                    trainings.update()
                    .where(T.id == training_id, T.claimed_by == replica, T.status == QUEUED)
                    .values(status=RUNNING, started_at=first)
                ).rowcount
            )

    def progress(self, training_id: str, replica: str, **values) -> bool:
        """Its logs, step and losses so far, while `replica` holds it."""
        with self.db.tx() as conn:
            return bool(
                conn.execute(
                    trainings.update()
                    .where(T.id == training_id, T.claimed_by == replica)
                    .where(T.status.not_in(ENDED))
                    .values(**values)
                ).rowcount
            )

    def keep_checkpoint(self, training_id: str, replica: str, step: int, path: Path) -> bool:
        """The training's latest checkpoint (the file at `path`, replacing the one before),
        while `replica` holds it: the bytes first, then the row that names them."""
        key = f"trainings/{training_id}/checkpoint-{step}.tar"
        self.blobs.put_file(key, path)
        with self.db.tx() as conn:
            old = conn.scalar(sa.select(T.checkpoint_key).where(T.id == training_id))
            kept = conn.execute(
                trainings.update()
                .where(T.id == training_id, T.claimed_by == replica, T.status.not_in(ENDED))
                .values(checkpoint_key=key, checkpoint_step=step)
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
            done = conn.execute(
                trainings.update()
                .where(T.id == training_id, T.claimed_by == replica, T.status.not_in(ENDED))
                .values(status=QUEUED, claimed_by=None)
            ).rowcount
            if done:
                self.db.notify(conn, JOBS)
        return bool(done)

    def requeue(self, conn: sa.Connection, where: list) -> int:
        """The claimed trainings `where` selects (of replicas that died, stopped or restarted)
        wait in the queue again with their checkpoints. How many."""
        count = conn.execute(
            trainings.update()
            .where(T.claimed_by.is_not(None), T.status.not_in(ENDED), *where)
            .values(status=QUEUED, claimed_by=None)
        ).rowcount
        if count:
            self.db.notify(conn, JOBS)
        return count

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
        values: dict[str, Any] = {"status": status, "completed_at": time.time(), "claimed_by": None}
        values.update(error=error, metrics=metrics, checkpoint_key=None, input_files=None)
        if logs is not None:
            values["logs"] = logs
        try:
            with self.db.tx() as conn:
                row = conn.execute(sa.select(trainings).where(T.id == training_id)).first()
                found = conn.execute(
                    trainings.update()
                    .where(T.id == training_id, T.claimed_by == replica, T.status.not_in(ENDED))
                    .values(**values)
                ).rowcount
                if not found:
                    raise _NotOurs()
                if key is not None:
                    _add_version(conn, row, key)
        except BaseException as err:
            self.blobs.delete([key] if key else [])
            if isinstance(err, _NotOurs):
                return None
            raise
        self.blobs.delete([row.checkpoint_key, *(row.input_files or {}).values()])
        return self.get(training_id)

    # ---- cancelled --------------------------------------------------------------------------
    def request_cancel(self, training_id: str) -> bool:
        """Cancel a queued training at once (True); mark a claimed one for its replica, which
        the CANCELS channel wakes."""
        with self.db.tx() as conn:
            kept = conn.execute(
                sa.select(T.checkpoint_key, T.input_files).where(T.id == training_id)
            ).first()
            done = conn.execute(
                trainings.update()
                .where(T.id == training_id, *unclaimed(trainings))
                .values(
                    status=PredictionStatus.CANCELED,
                    completed_at=time.time(),
                    cancel_requested=True,
                    checkpoint_key=None,
                    input_files=None,
                )
            ).rowcount
            if not done:
                marked = conn.execute(
                    trainings.update()
                    .where(T.id == training_id, T.status.not_in(ENDED))
                    .values(cancel_requested=True)
                ).rowcount
                if marked:
                    self.db.notify(conn, CANCELS, training_id)
        if done and kept is not None:  # its bytes, a checkpoint if it was handed back
            self.blobs.delete([kept.checkpoint_key, *(kept.input_files or {}).values()])
        return bool(done)

    def cancels_requested(self, training_ids: list[str]) -> list[str]:
        """Those of `training_ids` (claimed here) that a cancel reached on any replica."""
        if not training_ids:
            return []
        query = sa.select(T.id).where(T.id.in_(training_ids), T.cancel_requested)
        with self.db.read() as conn:
            return list(conn.execute(query).scalars())


class _NotOurs(Exception):
    """The training had ended, or another replica holds it."""


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
