"""Expiry within the store's bounds: what outlived SDXL_PREDICTION_TTL goes, then the oldest
ended predictions while the store is over SDXL_MAX_STORED_PREDICTIONS or
SDXL_MAX_STORED_BYTES; their files with them (after the rows, so that no row ever names a
file that is gone), and files no row names once they are a day old (a crash between the two)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.tables import (
    ENDED,
    files,
    image_urls,
    outputs,
    predictions,
    previews,
    trainings,
    versions,
)

BATCH = 50  # ended predictions removed at a time while over a bound
ORPHAN_AGE_S = 86400.0


class Expiry:
    def __init__(self, db: Database, blobs: Blobs, limits):
        self.db = db
        self.blobs = blobs
        self.limits = limits

    def expire(self, now: float | None = None) -> int:
        """How many rows went."""
        now = time.time() if now is None else now
        cutoff = now - self.limits.ttl_s
        removed, keys = 0, []
        with self.db.tx() as conn:
            old = conn.execute(
                sa.select(predictions.c.id).where(
                    predictions.c.status.in_(ENDED), predictions.c.completed_at < cutoff
                )
            ).scalars()
            removed += self._delete_predictions(conn, list(old), keys)
            for table in (files, image_urls):
                gone = table.c.created_at < cutoff
                keys += conn.execute(sa.select(table.c.key).where(gone)).scalars().all()
                removed += conn.execute(table.delete().where(gone)).rowcount
            while self._over_bounds(conn):
                oldest = conn.execute(
                    sa.select(predictions.c.id)
                    .where(predictions.c.status.in_(ENDED))
                    .order_by(predictions.c.number)
                    .limit(BATCH)
                ).scalars()
                batch = list(oldest)
                if not batch:
                    break
                removed += self._delete_predictions(conn, batch, keys)
        self.blobs.delete(keys)  # committed: no row names them now
        return removed

    def sweep(self) -> int:
        """Remove the files no row names (older than a day); how many."""
        with self.db.read() as conn:
            known = set()
            for table in (outputs, files, image_urls):
                known |= set(conn.execute(sa.select(table.c.key)).scalars())
            known |= set(conn.execute(sa.select(trainings.c.checkpoint_key)).scalars())
            for kept in conn.execute(sa.select(trainings.c.input_files)).scalars():
                known |= set((kept or {}).values())
            known |= set(conn.execute(sa.select(versions.c.weights_key)).scalars())
        return self.blobs.sweep(known, ORPHAN_AGE_S)

    def _delete_predictions(self, conn, ids: list[str], keys: list) -> int:
        if not ids:
            return 0
        keys += (
            conn.execute(sa.select(outputs.c.key).where(outputs.c.prediction_id.in_(ids)))
            .scalars()
            .all()
        )
        conn.execute(outputs.delete().where(outputs.c.prediction_id.in_(ids)))
        conn.execute(previews.delete().where(previews.c.prediction_id.in_(ids)))
        return conn.execute(predictions.delete().where(predictions.c.id.in_(ids))).rowcount

    def _over_bounds(self, conn) -> bool:
        count = conn.scalar(sa.select(sa.func.count()).select_from(predictions))
        over = count > self.limits.max_predictions
        return over or stored_bytes(conn) > self.limits.max_bytes

    def stored_bytes(self) -> int:
        with self.db.read() as conn:
            return stored_bytes(conn)


def stored_bytes(conn) -> int:
    def total(column) -> int:
        return conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(column), 0)))

    return total(outputs.c.size) + total(files.c.size) + total(image_urls.c.size)
