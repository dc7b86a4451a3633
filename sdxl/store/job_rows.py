"""What stored predictions and trainings share (`prediction_rows`, `training_rows` differ only
in their columns and fields): created queued, read and paged, claimed by one replica in the
tenants' turns, started, queued again, cancelled, ended.

Every change that concerns other replicas notifies a channel (`Database.notify`, heard through
`sdxl.store.wake`), so that they wake on it instead of polling the store:

- `JOBS` (payload ""): a job became claimable (created, handed back, queued again);
- `CANCELS` (payload: the job's id): a cancel reached a job that a replica has claimed;
- `ENDS` (payload: the job's id): a job ended (finished, a queued one cancelled, failed for a
  dead or restarted replica), one notification per job, also when many end together. Expiry
  removes ended jobs and tells nobody.

A listener may also hear "" on any channel (`sdxl.store.wake`: its connection was made again,
or it was added late): something may have been missed, look at the store afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.tables import (
    ANY,
    ENDED,
    NO_TENANT,
    QUEUED,
    RUNNING,
    StoredStatus,
    owned,
    tenants,
    unclaimed,
)

JOBS = "sdxl_jobs"  # a job became claimable (created, handed back, queued again)
CANCELS = "sdxl_cancels"  # payload: the id of a claimed job a cancel reached
ENDS = "sdxl_ends"  # payload: the id of a job that ended
PREVIEWS = "sdxl_previews"  # payload: the id of a prediction whose previews someone reads


@dataclass(frozen=True)
class Turn:
    """A tenant waiting for the GPU: its oldest queued job's creation, its last service."""

    tenant: str | None
    created_at: float
    served_at: float | None
    waiting: int = 1  # its jobs queued and unclaimed
    kind: str = "prediction"  # or "training": which table its jobs wait in


class StoredJobs:
    """The jobs of one table; a subclass names it and adds what only its jobs have."""

    table: ClassVar[sa.Table]  # predictions or trainings
    kind: ClassVar[str]  # its turns' kind
    fields: ClassVar[dict[str, Any]] = {}  # what a created job starts with beyond the common
    cleared: ClassVar[dict[str, Any]] = {}  # what an ended job no longer keeps

    def __init__(self, db: Database, blobs: Blobs):
        self.db = db
        self.blobs = blobs

    # ---- created, read ------------------------------------------------------------------
    def create(self, row: dict) -> dict:
        """Insert a queued job for `row["tenant"]`; StoreFull when there is no room for it
        (`_check_room`)."""
        with self.db.tx() as conn:
            self._check_room(conn, row.get("tenant"))
            row = {**row, **self.fields, "status": QUEUED, "logs": "", "created_at": time.time()}
            conn.execute(self.table.insert().values(**row))
            self.db.notify(conn, JOBS)
        return self.get(row["id"])

    def _check_room(self, conn: sa.Connection, tenant: str | None) -> None:
        """StoreFull when `tenant` may not queue one more job now."""

    def get(self, job_id: str, tenant: str | None = ANY) -> dict | None:
        """The job, if it is `tenant`'s (ANY: whoever's)."""
        return self.db.first(
            owned(sa.select(self.table).where(self._is(job_id)), self.table, tenant)
        )

    def page(self, before: int | None, size: int, tenant: str | None = ANY) -> list[dict]:
        """Newest first: `size` of `tenant`'s jobs numbered below `before` (None: the newest)."""
        c = self.table.c
        query = sa.select(self.table).order_by(c.number.desc()).limit(size)
        if before is not None:
            query = query.where(c.number < before)
        return self.db.rows(owned(query, self.table, tenant))

    # ---- claimed, in the tenants' turns -------------------------------------------------
    def turns(self) -> list[Turn]:
        """Each tenant with jobs queued and unclaimed: when its oldest was created, how many
        wait, and when a replica last took one of its jobs, of either table (None: never). One
        grouping of the queued rows (indexed by status), joined with one row per tenant."""
        c = self.table.c
        name = sa.func.coalesce(c.tenant, NO_TENANT).label("tenant")
        heads = (
            sa.select(
                name,
                sa.func.min(c.created_at).label("created_at"),
                sa.func.count().label("waiting"),
            )
            .where(*unclaimed(self.table))
            .group_by(name)
            .subquery()
        )
        query = sa.select(
            heads.c.tenant, heads.c.created_at, tenants.c.served_at, heads.c.waiting
        ).select_from(heads.outerjoin(tenants, heads.c.tenant == tenants.c.name))
        with self.db.read() as conn:
            rows = conn.execute(query)
            return [
                Turn(r.tenant or None, r.created_at, r.served_at, r.waiting, self.kind)
                for r in rows
            ]

    def claim(self, replica: str, tenant: str | None = ANY) -> dict | None:
        """The oldest queued job (of `tenant`) nobody has claimed, now claimed by `replica`;
        the tenant's turn is stamped with it."""
        c = self.table.c
        heads = owned(
            sa.select(c.number, c.tenant).where(*unclaimed(self.table)), self.table, tenant
        )
        heads = heads.order_by(c.number).limit(1).with_for_update(skip_locked=True)
        for _ in range(10):  # another replica may win the race for a row: take the next
            with self.db.tx() as conn:
                head = conn.execute(heads).first()
                if head is None:
                    return None
                now = time.time()
                won = conn.execute(
                    self.table.update()
                    .where(c.number == head.number, c.claimed_by.is_(None))
                    .values(claimed_by=replica, claimed_at=now)
                ).rowcount
                if won:
                    _served(conn, head.tenant, now)
                    row = conn.execute(sa.select(self.table).where(c.number == head.number))
                    return dict(row.first()._mapping)
        return None

    def started(self, job_id: str, replica: str) -> bool:
        """Mark it running, if `replica` still holds its claim (False: it was taken away); a
        resumed one keeps its first start."""
        c = self.table.c
        first = sa.func.coalesce(c.started_at, time.time())
        with self.db.tx() as conn:
            return bool(
                conn.execute(
                    self.table.update()
                    .where(self._is(job_id), c.claimed_by == replica, c.status == QUEUED)
                    .values(status=RUNNING, started_at=first)
                ).rowcount
            )

    def requeue(self, conn: sa.Connection, where: list) -> int:
        """The claimed jobs `where` selects, not ended, wait in the queue again (JOBS told).
        How many."""
        c = self.table.c
        count = conn.execute(
            self.table.update()
            .where(c.claimed_by.is_not(None), c.status.not_in(ENDED), *where)
            .values(status=QUEUED, claimed_by=None)
        ).rowcount
        if count:
            self.db.notify(conn, JOBS)
        return count

    # ---- ended ----------------------------------------------------------------------------
    def _end(
        self,
        job_id: str,
        status: str,
        values: dict[str, Any],
        *,
        replica: str | None,
        written: Iterable[str] = (),
        within: Callable[[sa.Connection, Any], None] | None = None,
    ):
        """End a job with `values` besides its status and end (`cleared` goes), only while
        `replica` holds its claim when one is given; `within(conn, row)` in the same
        transaction, and ENDS told. `written`: the keys of files written for it beforehand,
        deleted again when it does not end. The row as it was before (its files, `_files_of`,
        go once it ended), or None when it had ended already or is another replica's."""
        c = self.table.c
        values = {"status": status, "completed_at": time.time(), "claimed_by": None, **values}
        where = [self._is(job_id), c.status.not_in(ENDED)]
        if replica is not None:
            where.append(c.claimed_by == replica)
        written = list(written)
        try:
            with self.db.tx() as conn:
                row = conn.execute(sa.select(self.table).where(self._is(job_id))).first()
                ended = self.table.update().where(*where).values(**values, **self.cleared)
                if not conn.execute(ended).rowcount:
                    raise _NotOurs()
                if within is not None:
                    within(conn, row)
                self.db.notify(conn, ENDS, job_id)
        except BaseException as err:  # no row names them: the files go too
            self.blobs.delete(written)
            if isinstance(err, _NotOurs):
                return None
            raise
        self.blobs.delete(self._files_of(row))
        return row

    def _files_of(self, row) -> list[str | None]:
        """The keys of the files an ended job no longer needs."""
        return []

    # ---- cancelled ------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once (True); mark a claimed one for its replica, which the
        CANCELS channel wakes."""
        c = self.table.c
        with self.db.tx() as conn:
            row = conn.execute(sa.select(self.table).where(self._is(job_id))).first()
            done = conn.execute(
                self.table.update()
                .where(self._is(job_id), *unclaimed(self.table))
                .values(
                    status=StoredStatus.CANCELED,
                    completed_at=time.time(),
                    cancel_requested=True,
                    **self.cleared,
                )
            ).rowcount
            if done:
                self.db.notify(conn, ENDS, job_id)
            else:
                marked = conn.execute(
                    self.table.update()
                    .where(self._is(job_id), c.status.not_in(ENDED))
                    .values(cancel_requested=True)
                ).rowcount
                if marked:
                    self.db.notify(conn, CANCELS, job_id)
        if done:  # its files (a training's checkpoint if it was handed back, its inputs)
            self.blobs.delete(self._files_of(row))
        return bool(done)

    def cancels_requested(self, job_ids: list[str]) -> list[str]:
        """Those of `job_ids` (claimed here) that a cancel reached on any replica."""
        if not job_ids:
            return []
        c = self.table.c
        query = sa.select(c.id).where(c.id.in_(job_ids), c.cancel_requested)
        with self.db.read() as conn:
            return list(conn.execute(query).scalars())

    def _is(self, job_id: str):
        return self.table.c.id == job_id


class _NotOurs(Exception):
    """The job had ended, or another replica holds it."""


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
