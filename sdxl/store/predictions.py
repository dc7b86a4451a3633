"""Stored predictions: created queued, claimed by one replica (the tenants in turn), started,
ended with their outputs (bytes in the files backend), cancelled; their latest preview.

Every change that makes a prediction claimable, or asks a replica to cancel one, notifies its
channel (`JOBS`, `CANCELS`), so that replicas wake on it instead of polling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.errors import StoreFull
from sdxl.store.tables import (
    ANY,
    ENDED,
    NO_TENANT,
    QUEUED,
    RUNNING,
    PredictionStatus,
    new_token,
    of_tenant,
    outputs,
    predictions,
    previews,
    tenants,
    unclaimed,
)

JOBS = "sdxl_jobs"  # a prediction became claimable (created, handed back, queued again)
CANCELS = "sdxl_cancels"  # payload: the id of a claimed prediction a cancel reached


@dataclass(frozen=True)
class Turn:
    """A tenant waiting for the GPU: its oldest queued job's creation, its last service."""

    tenant: str | None
    created_at: float
    served_at: float | None
    waiting: int = 1  # its jobs queued and unclaimed
    kind: str = "prediction"  # or "training": which table its jobs wait in


class Predictions:
    def __init__(self, db: Database, blobs: Blobs, limits):
        self.db = db
        self.blobs = blobs
        self.limits = limits  # sdxl.http.settings.StoreLimits

    # ---- created, read ------------------------------------------------------------------
    def create(self, row: dict) -> dict:
        """Insert a queued prediction for `row["tenant"]`; StoreFull when too many wait
        already, in all or of that tenant."""
        count = sa.select(sa.func.count()).where(predictions.c.status == QUEUED)
        with self.db.tx() as conn:
            waiting = conn.scalar(count)
            if waiting >= self.limits.max_queued:
                raise StoreFull(waiting)
            if self.limits.max_queued_per_tenant is not None:
                mine = conn.scalar(count.where(of_tenant(predictions, row.get("tenant"))))
                if mine >= self.limits.max_queued_per_tenant:
                    raise StoreFull(mine, per_tenant=True)
            row = {**row, "status": QUEUED, "logs": "", "created_at": time.time()}
            conn.execute(predictions.insert().values(**row))
            self.db.notify(conn, JOBS)
        return self.get(row["id"])

    def get(self, prediction_id: str, tenant: str | None = ANY) -> dict | None:
        """The prediction, if it is `tenant`'s (ANY: whoever's)."""
        query = sa.select(predictions).where(predictions.c.id == prediction_id)
        if tenant is not ANY:
            query = query.where(of_tenant(predictions, tenant))
        with self.db.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def page(self, before: int | None, size: int, tenant: str | None = ANY) -> list[dict]:
        """Newest first: `size` of `tenant`'s predictions numbered below `before` (None: the
        newest)."""
        query = sa.select(predictions).order_by(predictions.c.number.desc()).limit(size)
        if before is not None:
            query = query.where(predictions.c.number < before)
        if tenant is not ANY:
            query = query.where(of_tenant(predictions, tenant))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count(self) -> int:
        with self.db.read() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(predictions))

    def count_queued(self) -> int:
        with self.db.read() as conn:
            return conn.scalar(sa.select(sa.func.count()).where(*unclaimed(predictions)))

    def queued_by_tenant(self) -> dict[str | None, int]:
        """How many predictions of each tenant wait unclaimed."""
        query = (
            sa.select(predictions.c.tenant, sa.func.count())
            .where(*unclaimed(predictions))
            .group_by(predictions.c.tenant)
        )
        with self.db.read() as conn:
            return {tenant: count for tenant, count in conn.execute(query)}

    # ---- claimed, in the tenants' turns -------------------------------------------------
    def turns(self) -> list[Turn]:
        """Each tenant with predictions queued and unclaimed: when its oldest was created, how
        many wait, and when a replica last took one of its predictions (None: never). A
        grouping of the queued rows only (indexed by status), and one row per tenant."""
        return turns_of(self.db, predictions, "prediction")

    def claim(self, replica: str, tenant: str | None = ANY) -> dict | None:
        """The oldest queued prediction (of `tenant`) nobody has claimed, now claimed by
        `replica`; the tenant's turn is stamped with it."""
        where = unclaimed(predictions)
        if tenant is not ANY:
            where.append(of_tenant(predictions, tenant))
        for _ in range(10):  # another replica may win the race for a row: take the next
            with self.db.tx() as conn:
                query = (
                    sa.select(predictions.c.number, predictions.c.tenant)
                    .where(*where)
                    .order_by(predictions.c.number)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                head = conn.execute(query).first()
                if head is None:
                    return None
                now = time.time()
                won = conn.execute(
                    predictions.update()
                    .where(predictions.c.number == head.number, predictions.c.claimed_by.is_(None))
                    .values(claimed_by=replica, claimed_at=now)
                ).rowcount
                if won:
                    _served(conn, head.tenant, now)
                    row = conn.execute(
                        sa.select(predictions).where(predictions.c.number == head.number)
                    ).first()
                    return dict(row._mapping)
        return None

    def started(self, prediction_id: str, replica: str) -> bool:
        """Mark it running, if `replica` still holds its claim (False: it was taken away)."""
        with self.db.tx() as conn:
            return bool(
                conn.execute(
                    predictions.update()
                    .where(
                        predictions.c.id == prediction_id,
                        predictions.c.claimed_by == replica,
                        predictions.c.status == QUEUED,
                    )
                    .values(status=RUNNING, started_at=time.time())
                ).rowcount
            )

    def update(self, prediction_id: str, **values) -> None:
        with self.db.tx() as conn:
            conn.execute(
                predictions.update().where(predictions.c.id == prediction_id).values(**values)
            )

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
        values: dict[str, Any] = {"status": status, "completed_at": time.time()}
        if started_at is not None:
            values["started_at"] = sa.func.coalesce(predictions.c.started_at, started_at)
        values.update(error=error, metrics=metrics, claimed_by=None)
        if logs is not None:
            values["logs"] = logs
        if status == PredictionStatus.SUCCEEDED:
            values["output_count"] = len(images)
        where = [predictions.c.id == prediction_id, predictions.c.status.not_in(ENDED)]
        if replica is not None:
            where.append(predictions.c.claimed_by == replica)
        rows = []
        for index, (name, content_type, data) in enumerate(images):
            token = new_token()
            key = f"outputs/{prediction_id}/{token}-{name}"
            size = self.blobs.put(key, data)
            rows.append(
                dict(prediction_id=prediction_id, index=index, token=token, name=name)
                | dict(content_type=content_type, key=key, size=size)
            )
        try:
            with self.db.tx() as conn:
                if not conn.execute(predictions.update().where(*where).values(**values)).rowcount:
                    raise _NotOurs()
                conn.execute(previews.delete().where(previews.c.prediction_id == prediction_id))
                for row in rows:
                    conn.execute(outputs.insert().values(**row))
        except BaseException as err:  # the rows do not name them: the files go too
            self.blobs.delete(row["key"] for row in rows)
            if isinstance(err, _NotOurs):
                return False
            raise
        return True

    def outputs_of(self, prediction_id: str) -> list[dict]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(outputs)
                .where(outputs.c.prediction_id == prediction_id)
                .order_by(outputs.c.index)
            )
            return [dict(r._mapping) for r in rows]

    def output_by_token(self, token: str) -> dict | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(outputs).where(outputs.c.token == token)).first()
        return None if row is None else dict(row._mapping)

    # ---- previews -------------------------------------------------------------------------
    def set_preview(self, prediction_id: str, stage: str, step: int, total: int, data: bytes):
        """The latest preview of a prediction that is still running (replaces the one before)."""
        with self.db.tx() as conn:
            running = conn.scalar(
                sa.select(predictions.c.status).where(predictions.c.id == prediction_id)
            )
            if running != RUNNING:
                return
            conn.execute(previews.delete().where(previews.c.prediction_id == prediction_id))
            conn.execute(
                previews.insert().values(
                    prediction_id=prediction_id, stage=stage, step=step, total=total, data=data
                )
            )

    def preview_of(self, prediction_id: str) -> dict | None:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(previews).where(previews.c.prediction_id == prediction_id)
            ).first()
        return None if row is None else dict(row._mapping)

    # ---- cancelled ------------------------------------------------------------------------
    def request_cancel(self, prediction_id: str) -> bool:
        """Cancel a queued prediction at once (True); mark a claimed one for its replica, which
        the CANCELS channel wakes."""
        with self.db.tx() as conn:
            done = conn.execute(
                predictions.update()
                .where(predictions.c.id == prediction_id, *unclaimed(predictions))
                .values(
                    status=PredictionStatus.CANCELED,
                    completed_at=time.time(),
                    cancel_requested=True,
                )
            ).rowcount
            if done:
                return True
            marked = conn.execute(
                predictions.update()
                .where(predictions.c.id == prediction_id, predictions.c.status.not_in(ENDED))
                .values(cancel_requested=True)
            ).rowcount
            if marked:
                self.db.notify(conn, CANCELS, prediction_id)
        return False

    def cancels_requested(self, prediction_ids: list[str]) -> list[str]:
        """Those of `prediction_ids` (claimed here) that a cancel reached on any replica."""
        if not prediction_ids:
            return []
        with self.db.read() as conn:
            return list(
                conn.execute(
                    sa.select(predictions.c.id).where(
                        predictions.c.id.in_(prediction_ids), predictions.c.cancel_requested
                    )
                ).scalars()
            )


class _NotOurs(Exception):
    """The prediction had ended, or another replica holds it."""


def turns_of(db: Database, table: sa.Table, kind: str) -> list[Turn]:
    """Each tenant with rows of `table` (predictions or trainings) queued and unclaimed, as a
    Turn of `kind`: one grouping of the queued rows, joined with one row per tenant."""
    name = sa.func.coalesce(table.c.tenant, NO_TENANT).label("tenant")
    heads = (
        sa.select(
            name,
            sa.func.min(table.c.created_at).label("created_at"),
            sa.func.count().label("waiting"),
        )
        .where(*unclaimed(table))
        .group_by(name)
        .subquery()
    )
    query = sa.select(
        heads.c.tenant, heads.c.created_at, tenants.c.served_at, heads.c.waiting
    ).select_from(heads.outerjoin(tenants, heads.c.tenant == tenants.c.name))
    with db.read() as conn:
        rows = conn.execute(query)
        return [Turn(r.tenant or None, r.created_at, r.served_at, r.waiting, kind) for r in rows]


def _served(conn: sa.Connection, tenant: str | None, now: float) -> None:
    """Stamp `tenant`'s turn: one upsert, so that replicas claiming together never collide."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    name = NO_TENANT if tenant is None else tenant
    stamp = insert(tenants).values(name=name, served_at=now)
    conn.execute(
        stamp.on_conflict_do_update(index_elements=[tenants.c.name], set_={"served_at": now})
    )
