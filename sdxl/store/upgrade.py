"""The store's schema made current at start, whatever version wrote the database, with nothing
stored lost on the way. It runs in one transaction that only one replica at a time holds
(PostgreSQL's advisory lock; SQLite's write lock): an upgrade that stops half-way (a crash, an
outage) is rolled back and runs again at the next start, and the files it wrote meanwhile are
written again under the same keys. Our own steps rather than Alembic: three versions, and a
step that moves bytes into the files backend, which no migration tool does for us.

- version 0, an empty database: the current tables.
- version 1 (before the files backend; it has no `schema_version` setting): the columns added
  with tenants; every output's, upload's and url image's bytes written to the files backend
  and their `data` columns dropped; the tenants' turns read from the claims; then as version 2.
- version 2 (before fine-tuning): the trainings', models' and versions' tables added.
- version 3 (before the tenants' shares of the stored bytes): the uploads' index by tenant.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.tables import (
    FILES_BY_TENANT,
    NO_TENANT,
    SCHEMA_VERSION,
    meta,
    predictions,
    settings,
    tenants,
)

log = logging.getLogger("sdxl.store")

MOVE_BATCH = 50  # rows read at a time while their bytes move
# Columns version 1 gained after its first release (tenants): (table, column, type).
V1_LATE_COLUMNS = (
    ("predictions", "tenant", "VARCHAR(64)"),
    ("predictions", "claimed_at", "FLOAT"),
    ("files", "tenant", "VARCHAR(64)"),
)


@dataclass(frozen=True)
class Moved:
    """A version 1 table that kept bytes in `data`: its primary key, and the files key a row's
    bytes get (as the current code names them)."""

    table: str
    primary: tuple[str, ...]
    key: str  # a pattern of the row's columns

    @property
    def columns(self) -> list[str]:
        named = [field for _, field, _, _ in string.Formatter().parse(self.key) if field]
        return list(dict.fromkeys([*self.primary, *named]))


MOVED = (
    Moved("outputs", ("prediction_id", "index"), "outputs/{prediction_id}/{token}-{name}"),
    Moved("files", ("id",), "files/{id}"),
    Moved("image_urls", ("token",), "urls/{token}-{name}"),
)


def schema_version(conn: sa.Connection) -> int:
    names = set(sa.inspect(conn).get_table_names())
    if "predictions" not in names:
        return 0
    if "settings" in names:
        found = conn.scalar(sa.select(settings.c.value).where(settings.c.name == "schema_version"))
        if found is not None:
            return int(found)
    return 1


def upgrade(db: Database, blobs: Blobs) -> int:
    """Bring the database to SCHEMA_VERSION; the version it was at."""
    with db.migration_lock() as conn:
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the store's database is at schema version {found}, newer than this server's "
                f"{SCHEMA_VERSION}: run the newer server, or give this one a database of its own"
            )
        if found == 1:
            _add_columns(conn)
        if found < SCHEMA_VERSION:
            meta.create_all(conn)  # the tables an older version lacks, or everything
        if 0 < found < 4:  # create_all makes no index on a table that exists
            FILES_BY_TENANT.create(conn, checkfirst=True)
        if found == 1:
            moved = _move_bytes(conn, blobs)
            _turns_from_claims(conn)
            log.info("upgraded the store from version 1: %d files moved to %s", moved, blobs.root)
        if found < SCHEMA_VERSION:
            conn.execute(settings.delete().where(settings.c.name == "schema_version"))
            conn.execute(settings.insert().values(name="schema_version", value=str(SCHEMA_VERSION)))
    return found


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def _add_columns(conn: sa.Connection) -> None:
    wanted = [*V1_LATE_COLUMNS]
    for moved in MOVED:
        wanted += [(moved.table, "key", "VARCHAR(300)"), (moved.table, "size", "INTEGER")]
    for table, column, kind in wanted:
        if column not in _columns(conn, table):
            conn.execute(sa.text(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}'))


def _move_bytes(conn: sa.Connection, blobs: Blobs) -> int:
    """Each row's bytes written to the files backend and its key set, then `data` dropped."""
    total = 0
    for moved in MOVED:
        names = ", ".join(f'"{c}"' for c in moved.columns)
        match = " AND ".join(f'"{c}" = :{c}' for c in moved.primary)
        select = sa.text(f'SELECT {names}, data FROM {moved.table} WHERE "key" IS NULL LIMIT :n')
        update = sa.text(f'UPDATE {moved.table} SET "key" = :key, "size" = :size WHERE {match}')
        while rows := conn.execute(select, {"n": MOVE_BATCH}).mappings().all():
            for row in rows:
                key = moved.key.format(**row)
                size = blobs.put(key, bytes(row["data"]))
                conn.execute(
                    update, {**{c: row[c] for c in moved.primary}, "key": key, "size": size}
                )
            total += len(rows)
        conn.execute(sa.text(f"ALTER TABLE {moved.table} DROP COLUMN data"))
    return total


def _turns_from_claims(conn: sa.Connection) -> None:
    name = sa.func.coalesce(predictions.c.tenant, NO_TENANT)
    last = (
        sa.select(name, sa.func.max(predictions.c.claimed_at))
        .where(predictions.c.claimed_at.is_not(None))
        .group_by(name)
    )
    for tenant, served_at in conn.execute(last).all():
        conn.execute(tenants.insert().values(name=tenant, served_at=served_at))
