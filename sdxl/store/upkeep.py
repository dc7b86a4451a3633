"""The store's rows beside the predictions' own: the replicas' heartbeats and claims, uploaded
files, the server's settings, and expiry within the store's bounds. Mixed into `Store`, whose
transactions (`_tx`, `_read`) and limits they use."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection

import sqlalchemy as sa

from sdxl.store.tables import (
    ANY,
    ENDED,
    QUEUED,
    RUNNING,
    PredictionStatus,
    file_of_tenant,
    files,
    image_urls,
    new_id,
    outputs,
    predictions,
    previews,
    replicas,
    settings,
)


class ReplicaRows:
    def beat(self, replica: str) -> None:
        """`replica` is alive: count its heartbeat up."""
        with self._tx() as conn:
            found = conn.execute(
                replicas.update()
                .where(replicas.c.name == replica)
                .values(beats=replicas.c.beats + 1, seen_at=time.time())
            ).rowcount
            if not found:
                conn.execute(replicas.insert().values(name=replica, beats=1, seen_at=time.time()))

    def heartbeats(self) -> dict[str, int | None]:
        """Every replica that beats or holds a claim, with its beat count (None: no row)."""
        with self._read() as conn:
            beats = dict(conn.execute(sa.select(replicas.c.name, replicas.c.beats)).all())
            holders = conn.execute(
                sa.select(predictions.c.claimed_by)
                .where(predictions.c.claimed_by.is_not(None), predictions.c.status.not_in(ENDED))
                .distinct()
            ).scalars()
        return {**dict.fromkeys(holders), **beats}

    def abandon(self, names: list[str], message: str) -> tuple[int, int]:
        """Replicas `names` died: what they ran failed with `message`, what they had claimed
        but not started is queued again, their rows go. (failed, requeued)"""
        now = time.time()
        with self._tx() as conn:
            failed = conn.execute(
                predictions.update()
                .where(predictions.c.claimed_by.in_(names), predictions.c.status == RUNNING)
                .values(
                    status=PredictionStatus.FAILED, error=message, completed_at=now, claimed_by=None
                )
            ).rowcount
            requeued = conn.execute(
                predictions.update()
                .where(predictions.c.claimed_by.in_(names), predictions.c.status == QUEUED)
                .values(claimed_by=None)
            ).rowcount
            conn.execute(replicas.delete().where(replicas.c.name.in_(names)))
        return failed, requeued

    def leave(self, replica: str) -> None:
        """`replica` stops cleanly (it holds no claim any more)."""
        with self._tx() as conn:
            conn.execute(replicas.delete().where(replicas.c.name == replica))

    def release(
        self, replica: str, *, since: float | None = None, keep: Collection[str] = ()
    ) -> int:
        """The predictions `replica` claimed and did not start are queued again, for another
        replica or the next start: all of them when it stops; after a claim whose answer was
        lost, those claimed at or after `since` but for `keep` (the ones it holds). How many."""
        where = [predictions.c.claimed_by == replica, predictions.c.status == QUEUED]
        if since is not None:
            where.append(predictions.c.claimed_at >= since)
        if keep:
            where.append(predictions.c.id.not_in(list(keep)))
        with self._tx() as conn:
            return conn.execute(predictions.update().where(*where).values(claimed_by=None)).rowcount

    def recover(self, message: str) -> tuple[int, int]:
        """After a restart of the only replica: what was running failed, what was claimed
        but not started is queued again. (failed, requeued)"""
        now = time.time()
        with self._tx() as conn:
            failed = conn.execute(
                predictions.update()
                .where(predictions.c.status == RUNNING)
                .values(
                    status=PredictionStatus.FAILED, error=message, completed_at=now, claimed_by=None
                )
            ).rowcount
            requeued = conn.execute(
                predictions.update()
                .where(predictions.c.status == QUEUED, predictions.c.claimed_by.is_not(None))
                .values(claimed_by=None)
            ).rowcount
        return failed, requeued


class FileRows:
    def add_file(
        self, name: str, content_type: str, data: bytes, metadata: dict, tenant: str | None
    ) -> dict:
        row = {
            "id": new_id(),
            "tenant": tenant,
            "name": name,
            "content_type": content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": metadata,
            "created_at": time.time(),
            "data": data,
        }
        with self._tx() as conn:
            conn.execute(files.insert().values(**row))
        return row

    def get_file(
        self, file_id: str, tenant: str | None = ANY, with_data: bool = False
    ) -> dict | None:
        """The file, if it is `tenant`'s (ANY: whoever's)."""
        columns = [c for c in files.c if with_data or c.name != "data"]
        query = sa.select(*columns).where(files.c.id == file_id)
        if tenant is not ANY:
            query = query.where(file_of_tenant(tenant))
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping)

    # ---- settings -----------------------------------------------------------------------
    def setting(self, name: str, make) -> str:
        """The stored value of `name`, made with `make()` and stored the first time."""
        query = sa.select(settings.c.value).where(settings.c.name == name)
        try:
            with self._tx() as conn:
                value = conn.scalar(query)
                if value is None:
                    value = make()
                    conn.execute(settings.insert().values(name=name, value=value))
        except sa.exc.IntegrityError:  # another replica stored it first: use theirs
            with self._read() as conn:
                value = conn.scalar(query)
        return value


class Expiry:
    def expire(self, now: float | None = None) -> int:
        """Remove what outlived SDXL_PREDICTION_TTL, then the oldest ended predictions while
        the store is over its count or byte bound. Returns how many rows went."""
        now = time.time() if now is None else now
        cutoff = now - self.limits.ttl_s
        removed = 0
        with self._tx() as conn:
            old = conn.execute(
                sa.select(predictions.c.id).where(
                    predictions.c.status.in_(ENDED), predictions.c.completed_at < cutoff
                )
            ).scalars()
            removed += self._delete_predictions(conn, list(old))
            removed += conn.execute(files.delete().where(files.c.created_at < cutoff)).rowcount
            removed += conn.execute(
                image_urls.delete().where(image_urls.c.created_at < cutoff)
            ).rowcount
            while self._over_bounds(conn):
                oldest = conn.execute(
                    sa.select(predictions.c.id)
                    .where(predictions.c.status.in_(ENDED))
                    .order_by(predictions.c.number)
                    .limit(50)
                ).scalars()
                batch = list(oldest)
                if not batch:
                    break
                removed += self._delete_predictions(conn, batch)
        return removed

    def _delete_predictions(self, conn, ids: list[str]) -> int:
        if not ids:
            return 0
        conn.execute(outputs.delete().where(outputs.c.prediction_id.in_(ids)))
        conn.execute(previews.delete().where(previews.c.prediction_id.in_(ids)))
        return conn.execute(predictions.delete().where(predictions.c.id.in_(ids))).rowcount

    def _over_bounds(self, conn) -> bool:
        count = conn.scalar(sa.select(sa.func.count()).select_from(predictions))
        over = count > self.limits.max_predictions
        return over or _stored_bytes(conn) > self.limits.max_bytes

    def stored_bytes(self) -> int:
        with self._read() as conn:
            return _stored_bytes(conn)


def _stored_bytes(conn) -> int:
    def total(column) -> int:
        return conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(column), 0)))

    return (
        total(sa.func.length(outputs.c.data))
        + total(files.c.size)
        + total(sa.func.length(image_urls.c.data))
    )
