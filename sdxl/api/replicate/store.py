"""Where the Replicate API keeps predictions, their outputs and uploaded files.

SQLAlchemy Core over an embedded SQLite file in SDXL_STATE_DIR by default, or any database
SDXL_DATABASE_URL names: a restart keeps every prediction and its outputs, and queued ones
are still queued. Outputs and files are stored in the database itself, so that whatever can
read a prediction can read its outputs. On a server database (PostgreSQL) any number of
replicas share the store: each claims the oldest unclaimed prediction with
SELECT ... FOR UPDATE SKIP LOCKED, and beats in `replicas` so that the others can tell when it
died. Rows are removed SDXL_PREDICTION_TTL seconds after they end (files after they were
uploaded), and the store is bounded by count and bytes.

A database that cannot be reached (or a disk that is full) raises StoreUnavailable (or
StoreDiskFull) with a plain message, never the driver's text: the APIs answer 503 and retry
what they must keep.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from sdxl.api.replicate.tables import (
    ENDED,
    QUEUED,
    RUNNING,
    PredictionStatus,
    files,
    image_urls,
    meta,
    outputs,
    predictions,
    previews,
    replicas,
    settings,
)
from sdxl.api.settings import StoreLimits

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # PostgreSQL: how long a connection attempt may take
OUTAGE_LOG_EVERY_S = 10.0  # an outage is logged once in this long, not once per request


class StoreFull(Exception):
    """Too many predictions wait already."""


class StoreUnavailable(Exception):
    """The database cannot be reached now (it is down, restarting or unreachable)."""

    message = "the prediction store cannot be reached (its database is down or unreachable)"

    def __init__(self, cause: str = ""):
        super().__init__(self.message)
        self.cause = cause  # the driver's text, for the operator's log only


class StoreDiskFull(StoreUnavailable):
    """The database cannot write: the disk (or the database's quota) is full."""

    message = "the server's disk is full, so the prediction store cannot write"


DISK_FULL = ("database or disk is full", "No space left on device", "could not extend file")
DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full


def unavailable(err: sa.exc.SQLAlchemyError) -> StoreUnavailable | None:
    """The StoreUnavailable `err` stands for, or None for an error of another kind."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state == DISK_FULL_SQLSTATE or any(words in text for words in DISK_FULL):
        return StoreDiskFull(text)
    connection_lost = isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated
    if connection_lost or isinstance(
        err, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError
    ):
        return StoreUnavailable(text)
    return None


def new_id() -> str:
    """A Replicate-style id: 26 lowercase letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


class Store:
    def __init__(self, url: str, limits: StoreLimits):
        self.limits = limits
        # SQLite is one process's file; any other database may be shared by many replicas.
        self.shared = not url.startswith("sqlite")
        options: dict[str, Any] = {"future": True, "pool_pre_ping": self.shared}
        if not self.shared:
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif url.startswith("postgresql"):  # an unreachable host fails in seconds, not minutes
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        self._outage_logged = -OUTAGE_LOG_EVERY_S
        self.db = sa.create_engine(url, **options)
        if not self.shared:
            sa.event.listen(self.db, "connect", _sqlite_pragmas)
        with self._tx() as conn:
            if self.db.dialect.name == "postgresql":  # replicas starting together: one creates
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7106)"))
            meta.create_all(conn)
        self.url = url

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        """A transaction: committed at the end, rolled back on an exception."""
        with self._translated(), self.db.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._translated(), self.db.connect() as conn:
            yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as err:
            down = unavailable(err)
            if down is None:
                raise
            now = time.monotonic()
            if now - self._outage_logged >= OUTAGE_LOG_EVERY_S:
                self._outage_logged = now
                log.warning("%s: %s", down.message, down.cause)
            raise down from err

    def ping(self) -> None:
        """StoreUnavailable when the database cannot be reached now."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    # ---- predictions --------------------------------------------------------------------
    def create(self, row: dict) -> dict:
        """Insert a queued prediction; StoreFull when too many wait already."""
        with self._tx() as conn:
            waiting = conn.scalar(sa.select(sa.func.count()).where(predictions.c.status == QUEUED))
            if waiting >= self.limits.max_queued:
                raise StoreFull(waiting)
            row = {**row, "status": QUEUED, "logs": "", "created_at": time.time()}
            conn.execute(predictions.insert().values(**row))
        return self.get(row["id"])

    def get(self, prediction_id: str) -> dict | None:
        with self._read() as conn:
            found = conn.execute(
                sa.select(predictions).where(predictions.c.id == prediction_id)
            ).first()
        return None if found is None else dict(found._mapping)

    def page(self, before: int | None, size: int) -> list[dict]:
        """Newest first: `size` predictions numbered below `before` (None: the newest)."""
        query = sa.select(predictions).order_by(predictions.c.number.desc()).limit(size)
        if before is not None:
            query = query.where(predictions.c.number < before)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count(self) -> int:
        with self._read() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(predictions))

    def count_queued(self) -> int:
        with self._read() as conn:
            query = sa.select(sa.func.count()).where(
                predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None)
            )
            return conn.scalar(query)

    def oldest_queued(self) -> float | None:
        """When the oldest unclaimed queued prediction was created."""
        with self._read() as conn:
            return conn.scalar(
                sa.select(sa.func.min(predictions.c.created_at)).where(
                    predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None)
                )
            )

    def claim(self, replica: str) -> dict | None:
        """The oldest queued prediction nobody has claimed, now claimed by `replica`."""
        for _ in range(10):  # another replica may win the race for a row: take the next
            with self._tx() as conn:
                query = (
                    sa.select(predictions.c.number)
                    .where(predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None))
                    .order_by(predictions.c.number)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                number = conn.scalar(query)
                if number is None:
                    return None
                won = conn.execute(
                    predictions.update()
                    .where(predictions.c.number == number, predictions.c.claimed_by.is_(None))
                    .values(claimed_by=replica)
                ).rowcount
                if won:
                    row = conn.execute(
                        sa.select(predictions).where(predictions.c.number == number)
                    ).first()
                    return dict(row._mapping)
        return None

    def update(self, prediction_id: str, **values) -> None:
        with self._tx() as conn:
            conn.execute(
                predictions.update().where(predictions.c.id == prediction_id).values(**values)
            )

    def started(self, prediction_id: str, replica: str) -> bool:
        """Mark it running, if `replica` still holds its claim (False: it was taken away)."""
        with self._tx() as conn:
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
    ) -> bool:
        """End a prediction; `images` are (name, content type, bytes) of its outputs. Given
        `replica`, only while that replica holds its claim. False if it had ended already."""
        values: dict[str, Any] = {"status": status, "completed_at": time.time()}
        values.update(error=error, metrics=metrics, claimed_by=None)
        if logs is not None:
            values["logs"] = logs
        if status == PredictionStatus.SUCCEEDED:
            values["output_count"] = len(images)
        where = [predictions.c.id == prediction_id, predictions.c.status.not_in(ENDED)]
        if replica is not None:
            where.append(predictions.c.claimed_by == replica)
        with self._tx() as conn:
            if not conn.execute(predictions.update().where(*where).values(**values)).rowcount:
                return False
            conn.execute(previews.delete().where(previews.c.prediction_id == prediction_id))
            for index, (name, content_type, data) in enumerate(images):
                conn.execute(
                    outputs.insert().values(
                        prediction_id=prediction_id,
                        index=index,
                        token=secrets.token_urlsafe(24),
                        name=name,
                        content_type=content_type,
                        data=data,
                    )
                )
        return True

    def outputs_of(self, prediction_id: str) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outputs)
                .where(outputs.c.prediction_id == prediction_id)
                .order_by(outputs.c.index)
            )
            return [dict(r._mapping) for r in rows]

    def output_by_token(self, token: str) -> dict | None:
        """An output of a prediction, or an image stored for a URL, by its unguessable token."""
        with self._read() as conn:
            row = conn.execute(sa.select(outputs).where(outputs.c.token == token)).first()
            if row is None:
                row = conn.execute(sa.select(image_urls).where(image_urls.c.token == token)).first()
        return None if row is None else dict(row._mapping)

    def add_images(self, images: list[tuple[str, str, bytes]]) -> list[str]:
        """Store images (name, content type, bytes) to be served by URL; their tokens."""
        rows = [
            {"token": secrets.token_urlsafe(24), "name": name, "content_type": kind, "data": data}
            for name, kind, data in images
        ]
        with self._tx() as conn:
            for row in rows:
                conn.execute(image_urls.insert().values(**row, created_at=time.time()))
        return [row["token"] for row in rows]

    # ---- previews -----------------------------------------------------------------------
    def set_preview(self, prediction_id: str, stage: str, step: int, total: int, data: bytes):
        """The latest preview of a prediction that is still running (replaces the one before)."""
        with self._tx() as conn:
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
        with self._read() as conn:
            row = conn.execute(
                sa.select(previews).where(previews.c.prediction_id == prediction_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def request_cancel(self, prediction_id: str) -> bool:
        """Cancel a queued prediction at once (True); mark a claimed one for its replica."""
        with self._tx() as conn:
            done = conn.execute(
                predictions.update()
                .where(
                    predictions.c.id == prediction_id,
                    predictions.c.status == QUEUED,
                    predictions.c.claimed_by.is_(None),
                )
                .values(
                    status=PredictionStatus.CANCELED,
                    completed_at=time.time(),
                    cancel_requested=True,
                )
            ).rowcount
            if done:
                return True
            conn.execute(
                predictions.update()
                .where(predictions.c.id == prediction_id, predictions.c.status.not_in(ENDED))
                .values(cancel_requested=True)
            )
        return False

    def cancels_requested(self, prediction_ids: list[str]) -> list[str]:
        """Those of `prediction_ids` (claimed here) that a cancel reached on any replica."""
        if not prediction_ids:
            return []
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(predictions.c.id).where(
                        predictions.c.id.in_(prediction_ids), predictions.c.cancel_requested
                    )
                ).scalars()
            )

    # ---- replicas -----------------------------------------------------------------------
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

    def release(self, replica: str) -> int:
        """`replica` stops: the predictions it claimed and did not start are queued again,
        for another replica or the next start. How many."""
        with self._tx() as conn:
            return conn.execute(
                predictions.update()
                .where(predictions.c.claimed_by == replica, predictions.c.status == QUEUED)
                .values(claimed_by=None)
            ).rowcount

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

    # ---- files --------------------------------------------------------------------------
    def add_file(self, name: str, content_type: str, data: bytes, metadata: dict) -> dict:
        row = {
            "id": new_id(),
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

    def get_file(self, file_id: str, with_data: bool = False) -> dict | None:
        columns = [c for c in files.c if with_data or c.name != "data"]
        with self._read() as conn:
            row = conn.execute(sa.select(*columns).where(files.c.id == file_id)).first()
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

    # ---- expiry -------------------------------------------------------------------------
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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
