"""Expiry within the store's bounds. What outlived SDXL_PREDICTION_TTL goes (ended predictions,
uploads, url images). Then, while the store holds more than SDXL_MAX_STORED_PREDICTIONS, the
oldest ended predictions of the tenant holding the most; while it holds more than
SDXL_MAX_STORED_BYTES, the oldest ended predictions and uploads, oldest first, of the tenant
furthest over its share (SDXL_MAX_STORED_BYTES_PER_KEY), and never a tenant's within its share
while another is over: one tenant's uploads or outputs cannot evict another's. Only when no
tenant is over its share (shares that add up to more than the whole) does the one holding the
most give way. An upload a queued or running job names is never removed.

Files go after their rows (so that no row ever names a file that is gone), and files no row
names once they are a day old (a crash between the two)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.shares import bytes_by_tenant, files_in_use, stored_bytes
from sdxl.store.tables import (
    ENDED,
    files,
    image_urls,
    of_tenant,
    outputs,
    predictions,
    previews,
    trainings,
    versions,
)

BATCH = 50  # rows removed at a time while over a bound
ORPHAN_AGE_S = 86400.0
NOBODY = object()  # no tenant may give way
P = predictions.c


class Expiry:
    def __init__(self, db: Database, blobs: Blobs, limits):
        self.db = db
        self.blobs = blobs
        self.limits = limits  # sdxl.store.limits.StoreLimits

    def expire(self, now: float | None = None) -> int:
        """How many rows went."""
        now = time.time() if now is None else now
        cutoff = now - self.limits.ttl_s
        removed, keys = 0, []
        with self.db.tx() as conn:
            needed = files_in_use(conn)
            old = sa.select(P.id).where(P.status.in_(ENDED), P.completed_at < cutoff)
            removed += self._delete_predictions(conn, list(conn.execute(old).scalars()), keys)
            stale = sa.select(files.c.id).where(files.c.created_at < cutoff)
            unused = [f for f in conn.execute(stale).scalars() if f not in needed]
            removed += self._delete_files(conn, unused, keys)
            gone = image_urls.c.created_at < cutoff
            keys += conn.execute(sa.select(image_urls.c.key).where(gone)).scalars().all()
            removed += conn.execute(image_urls.delete().where(gone)).rowcount
            removed += self._within_count(conn, keys)
            removed += self._within_bytes(conn, needed, keys)
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

    def stored_bytes(self) -> int:
        with self.db.read() as conn:
            return stored_bytes(conn)

    # ---- the count bound: the tenant holding the most predictions gives way -----------------
    def _within_count(self, conn, keys: list) -> int:
        over = self._count(conn) - self.limits.max_predictions
        if over <= 0:
            return 0
        is_ended = sa.func.sum(sa.case((P.status.in_(ENDED), 1), else_=0))
        counts = sa.select(P.tenant, sa.func.count(), is_ended).group_by(P.tenant)
        held = {tenant: [total, ended] for tenant, total, ended in conn.execute(counts)}
        removed = 0
        while over > 0:
            left = [tenant for tenant, (_, ended) in held.items() if ended]
            if not left:
                break  # every stored prediction waits or runs
            tenant = max(left, key=lambda t: held[t][0])
            oldest = (
                sa.select(P.id)
                .where(P.status.in_(ENDED), of_tenant(predictions, tenant))
                .order_by(P.number)
                .limit(BATCH)  # a batch at once: the creations after it find room
            )
            gone = self._delete_predictions(conn, list(conn.execute(oldest).scalars()), keys)
            held[tenant][0] -= gone
            held[tenant][1] = held[tenant][1] - gone if gone else 0
            over -= gone
            removed += gone
        return removed

    def _count(self, conn) -> int:
        return conn.scalar(sa.select(sa.func.count()).select_from(predictions))

    # ---- the bytes bound: the tenant furthest over its share gives way ----------------------
    def _within_bytes(self, conn, needed: set[str], keys: list) -> int:
        total, bound = stored_bytes(conn), self.limits.max_bytes
        if total <= bound:
            return 0
        held, spent, removed = bytes_by_tenant(conn), set(), 0
        while total > bound:
            tenant = self._gives_way(held, spent)
            if tenant is NOBODY:
                break
            batch = self._oldest_of(conn, tenant, needed)
            if not batch:
                spent.add(tenant)
                continue
            for _created, kind, row_id, size in batch:
                if total <= bound or self._gives_way(held, spent) != tenant:
                    break
                if kind == "prediction":
                    removed += self._delete_predictions(conn, [row_id], keys)
                else:
                    removed += self._delete_files(conn, [row_id], keys)
                held[tenant] -= size
                total -= size
        return removed

    def _gives_way(self, held: dict, spent: set):
        """The tenant whose rows go next: the one furthest over its share (all have the same
        share, so the one holding the most of those over it) with anything left to remove;
        NOBODY while a tenant over its share has nothing left. Only when none is over its
        share (shares that add up to more than the whole), the one holding the most."""
        share = self.limits.tenant_bytes
        over = [tenant for tenant, size in held.items() if size > share]
        left = [tenant for tenant in (over or held) if tenant not in spent and held[tenant] > 0]
        return max(left, key=held.__getitem__) if left else NOBODY

    def _oldest_of(self, conn, tenant, needed: set[str]) -> list[tuple]:
        """`tenant`'s oldest ended predictions and unneeded uploads, oldest first:
        (created_at, kind, id, bytes) of at most BATCH."""
        output_bytes = (
            sa.select(sa.func.coalesce(sa.func.sum(outputs.c.size), 0))
            .where(outputs.c.prediction_id == P.id)
            .scalar_subquery()
        )
        size = output_bytes + sa.func.coalesce(sa.func.length(P.webhook), 0)
        ended = (
            sa.select(P.created_at, P.id, size)
            .where(P.status.in_(ENDED), of_tenant(predictions, tenant))
            .order_by(P.number)
            .limit(BATCH)
        )
        uploads = (
            sa.select(files.c.created_at, files.c.id, files.c.size)
            .where(of_tenant(files, tenant))
            .order_by(files.c.created_at)
            .limit(BATCH + len(needed))
        )
        batch = [(c, "prediction", i, s) for c, i, s in conn.execute(ended)]
        batch += [(c, "file", i, s) for c, i, s in conn.execute(uploads) if i not in needed]
        return sorted(batch, key=lambda item: item[0])[:BATCH]

    # ---- removed ----------------------------------------------------------------------------
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
        return conn.execute(predictions.delete().where(P.id.in_(ids))).rowcount

    def _delete_files(self, conn, ids: list[str], keys: list) -> int:
        if not ids:
            return 0
        keys += conn.execute(sa.select(files.c.key).where(files.c.id.in_(ids))).scalars().all()
        return conn.execute(files.delete().where(files.c.id.in_(ids))).rowcount
