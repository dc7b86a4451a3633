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

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sdxl.http.settings import StoreLimits
from sdxl.store.errors import (  # noqa: F401 (its errors: re-exported)
    StoreDiskFull,
    StoreUnavailable,
    unavailable,
)
from sdxl.store.tables import (  # noqa: F401 (new_id: re-exported)
    ADDED_COLUMNS,
    ANY,
    ENDED,
    QUEUED,
    RUNNING,
    PredictionStatus,
    image_urls,
    meta,
    new_id,
    of_tenant,
    outputs,
    predictions,
    previews,
)
from sdxl.store.upkeep import Expiry, FileRows, ReplicaRows

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # PostgreSQL: how long a connection attempt may take
OUTAGE_LOG_EVERY_S = 10.0  # an outage is logged once in this long, not once per request


class StoreFull(Exception):
    """Too many predictions wait already (`per_tenant`: of the tenant creating one)."""

    def __init__(self, waiting: int, per_tenant: bool = False):
        super().__init__(waiting)
        self.waiting = waiting
        self.per_tenant = per_tenant


@dataclass(frozen=True)
class Turn:
    """A tenant waiting for the GPU: its oldest queued job's creation, its last service."""

    tenant: str | None
    created_at: float
    served_at: float | None
    waiting: int = 1  # its predictions queued and unclaimed


class Store(ReplicaRows, FileRows, Expiry):
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
            _add_missing_columns(conn)
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
        """Insert a queued prediction for `row["tenant"]`; StoreFull when too many wait
        already, in all or of that tenant."""
        count = sa.select(sa.func.count()).where(predictions.c.status == QUEUED)
        with self._tx() as conn:
            waiting = conn.scalar(count)
            if waiting >= self.limits.max_queued:
                raise StoreFull(waiting)
            if self.limits.max_queued_per_tenant is not None:
                mine = conn.scalar(count.where(of_tenant(row.get("tenant"))))
                if mine >= self.limits.max_queued_per_tenant:
                    raise StoreFull(mine, per_tenant=True)
            row = {**row, "status": QUEUED, "logs": "", "created_at": time.time()}
            conn.execute(predictions.insert().values(**row))
        return self.get(row["id"])

    def get(self, prediction_id: str, tenant: str | None = ANY) -> dict | None:
        """The prediction, if it is `tenant`'s (ANY: whoever's)."""
        query = sa.select(predictions).where(predictions.c.id == prediction_id)
        if tenant is not ANY:
            query = query.where(of_tenant(tenant))
        with self._read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def page(self, before: int | None, size: int, tenant: str | None = ANY) -> list[dict]:
        """Newest first: `size` of `tenant`'s predictions numbered below `before` (None: the
        newest)."""
        query = sa.select(predictions).order_by(predictions.c.number.desc()).limit(size)
        if before is not None:
            query = query.where(predictions.c.number < before)
        if tenant is not ANY:
            query = query.where(of_tenant(tenant))
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

    def queued_by_tenant(self) -> dict[str | None, int]:
        """How many predictions of each tenant wait unclaimed."""
        query = (
            sa.select(predictions.c.tenant, sa.func.count())
            .where(predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None))
            .group_by(predictions.c.tenant)
        )
        with self._read() as conn:
            return {tenant: count for tenant, count in conn.execute(query)}

    def turns(self) -> list[Turn]:
        """Each tenant with predictions queued and unclaimed: when its oldest was created, and
        when a replica last took one of its predictions (None: never)."""
        tenant = sa.func.coalesce(predictions.c.tenant, "").label("tenant")
        heads = (
            sa.select(
                tenant,
                sa.func.min(predictions.c.created_at).label("created_at"),
                sa.func.count().label("waiting"),
            )
            .where(predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None))
            .group_by(tenant)
            .subquery()
        )
        served = (
            sa.select(tenant, sa.func.max(predictions.c.claimed_at).label("served_at"))
            .where(predictions.c.claimed_at.is_not(None))
            .group_by(tenant)
            .subquery()
        )
        query = sa.select(
            heads.c.tenant, heads.c.created_at, served.c.served_at, heads.c.waiting
        ).select_from(heads.outerjoin(served, heads.c.tenant == served.c.tenant))
        with self._read() as conn:
            rows = conn.execute(query)
            return [Turn(r.tenant or None, r.created_at, r.served_at, r.waiting) for r in rows]

    def claim(self, replica: str, tenant: str | None = ANY) -> dict | None:
        """The oldest queued prediction (of `tenant`) nobody has claimed, now claimed by
        `replica`."""
        where = [predictions.c.status == QUEUED, predictions.c.claimed_by.is_(None)]
        if tenant is not ANY:
            where.append(of_tenant(tenant))
        for _ in range(10):  # another replica may win the race for a row: take the next
            with self._tx() as conn:
                query = (
                    sa.select(predictions.c.number)
                    .where(*where)
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
                    .values(claimed_by=replica, claimed_at=time.time())
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
        started_at: float | None = None,
    ) -> bool:
        """End a prediction; `images` are (name, content type, bytes) of its outputs. Given
        `replica`, only while that replica holds its claim. False if it had ended already.
        `started_at` is kept where the start could not be written (the store was away)."""
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


def _add_missing_columns(conn) -> None:
    """A database made by an older version gets the columns added since (nullable: its rows
    have no tenant, and only the admin key sees them)."""
    inspector = sa.inspect(conn)
    for table, column in ADDED_COLUMNS:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            log.info("the store's table %s got the column %s", table.name, column.name)
    for index in predictions.indexes:  # those of added columns, on an older database
        index.create(conn, checkfirst=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
