"""Stored predictions: the stored jobs of `sdxl.store.job_rows` (created queued, claimed in the
tenants' turns, started, cancelled, ended, with the wake-ups they send), bounded by the queued
caps; ended with their outputs (bytes in the files backend); their latest preview while they
run. One that was running when its replica died or restarted fails (`fail_running`)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.errors import StoreFull
from sdxl.store.job_rows import ENDS, PREVIEWS, StoredJobs
from sdxl.store.tables import (
    QUEUED,
    RUNNING,
    StoredStatus,
    new_token,
    of_tenant,
    outputs,
    predictions,
    previews,
    unclaimed,
)

P = predictions.c


class Predictions(StoredJobs):
    table = predictions
    kind = "prediction"

    def __init__(self, db: Database, blobs: Blobs, limits):
        super().__init__(db, blobs)
        self.limits = limits  # sdxl.store.limits.StoreLimits

    def _check_room(self, conn: sa.Connection, tenant: str | None) -> None:
        """StoreFull when too many wait already, in all or of `tenant`."""
        count = sa.select(sa.func.count()).where(P.status == QUEUED)
        waiting = conn.scalar(count)
        if waiting >= self.limits.max_queued:
            raise StoreFull(waiting)
        if self.limits.max_queued_per_tenant is not None:
            mine = conn.scalar(count.where(of_tenant(predictions, tenant)))
            if mine >= self.limits.max_queued_per_tenant:
                raise StoreFull(mine, per_tenant=True)

    # ---- counted ------------------------------------------------------------------------
    def count(self) -> int:
        with self.db.read() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(predictions))

    def count_queued(self) -> int:
        with self.db.read() as conn:
            return conn.scalar(sa.select(sa.func.count()).where(*unclaimed(predictions)))

    def queued_by_tenant(self) -> dict[str | None, int]:
        """How many predictions of each tenant wait unclaimed."""
        query = (
            sa.select(P.tenant, sa.func.count()).where(*unclaimed(predictions)).group_by(P.tenant)
        )
        with self.db.read() as conn:
            return {tenant: count for tenant, count in conn.execute(query)}

    # ---- running ----------------------------------------------------------------------------
    def update(self, prediction_id: str, **values) -> None:
        with self.db.tx() as conn:
            conn.execute(predictions.update().where(P.id == prediction_id).values(**values))

    def set_preview(self, prediction_id: str, stage: str, step: int, total: int, data: bytes):
        """The latest preview of a prediction that is still running (replaces the one before)."""
        with self.db.tx() as conn:
            running = conn.scalar(sa.select(P.status).where(P.id == prediction_id))
            if running != RUNNING:
                return
            conn.execute(previews.delete().where(previews.c.prediction_id == prediction_id))
            conn.execute(
                previews.insert().values(
                    prediction_id=prediction_id, stage=stage, step=step, total=total, data=data
                )
            )

    def want_previews(self, prediction_id: str) -> None:
        """Someone reads the prediction's previews: tell the replica running it (PREVIEWS)."""
        with self.db.tx() as conn:
            self.db.notify(conn, PREVIEWS, prediction_id)

    def preview_of(self, prediction_id: str) -> dict | None:
        return self.db.first(sa.select(previews).where(previews.c.prediction_id == prediction_id))

    # ---- ended ----------------------------------------------------------------------------
    def finish(
        self,
        prediction_id: str,
        status: str,
        *,
        error: str | None = None,
        metrics: dict | None = None,
        logs: str | None = None,
        images: list[tuple[str, str, bytes]] = (),
        replica: str | None = None,
        started_at: float | None = None,
    ) -> bool:
        """End a prediction; `images` are (name, content type, bytes) of its outputs, written
        to the files backend before the row says they are there. Given `replica`, only while
        that replica holds its claim. False if it had ended already. `started_at` is kept
        where the start could not be written (the store was away)."""
        values = {"error": error, "metrics": metrics}
        if started_at is not None:
            values["started_at"] = sa.func.coalesce(P.started_at, started_at)
        if logs is not None:
            values["logs"] = logs
        if status == StoredStatus.SUCCEEDED:
            values["output_count"] = len(images)
        rows = []
        for index, (name, content_type, data) in enumerate(images):
            token = new_token()
            key = f"outputs/{prediction_id}/{token}-{name}"
            size = self.blobs.put(key, data)
            rows.append(
                dict(prediction_id=prediction_id, index=index, token=token, name=name)
                | dict(content_type=content_type, key=key, size=size)
            )

        def with_outputs(conn: sa.Connection, _row) -> None:
            conn.execute(previews.delete().where(previews.c.prediction_id == prediction_id))
            for row in rows:
                conn.execute(outputs.insert().values(**row))

        written = [row["key"] for row in rows]
        ended = self._end(
            prediction_id, status, values, replica=replica, written=written, within=with_outputs
        )
        return ended is not None

    def fail_running(self, conn: sa.Connection, where: list, message: str) -> int:
        """The running predictions `where` selects fail with `message` (their replica died or
        restarted), ENDS told once per prediction. How many."""
        now = time.time()
        failed = conn.execute(
            predictions.update()
            .where(P.status == RUNNING, *where)
            .values(status=StoredStatus.FAILED, error=message, completed_at=now, claimed_by=None)
            .returning(P.id)
        ).scalars()
        ids = list(failed)
        for prediction_id in ids:
            self.db.notify(conn, ENDS, prediction_id)
        return len(ids)

    def outputs_of(self, prediction_id: str) -> list[dict]:
        query = sa.select(outputs).where(outputs.c.prediction_id == prediction_id)
        return self.db.rows(query.order_by(outputs.c.index))

    def output_by_token(self, token: str) -> dict | None:
        return self.db.first(sa.select(outputs).where(outputs.c.token == token))
