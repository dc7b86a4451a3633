"""The store's database: SQLAlchemy Core over an embedded SQLite file, or any database a URL
names (PostgreSQL for many replicas). Transactions translate an unreachable database or a full
disk into StoreUnavailable / StoreDiskFull with plain messages, logged once every ten seconds,
never the driver's text to a client. A transaction may notify a channel (`notify`): on
PostgreSQL with NOTIFY, delivered at commit to every replica's listener (`sdxl.store.wake`);
on SQLite to this process's listeners, once the transaction has committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from sdxl.store.errors import unavailable

log = logging.getLogger("sdxl.store")

CONNECT_TIMEOUT_S = 5  # PostgreSQL: how long a connection attempt may take
OUTAGE_LOG_EVERY_S = 10.0  # an outage is logged once in this long, not once per request
MIGRATION_LOCK = 7106  # pg_advisory_xact_lock key: one replica creates or upgrades the schema


class Database:
    def __init__(self, url: str):
        self.url = url
        # SQLite is one process's file; any other database may be shared by many replicas.
        self.shared = not url.startswith("sqlite")
        options: dict[str, Any] = {"future": True, "pool_pre_ping": self.shared}
        if not self.shared:
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif url.startswith("postgresql"):  # an unreachable host fails in seconds, not minutes
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        self.engine = sa.create_engine(url, **options)
        if not self.shared:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.postgres = self.engine.dialect.name == "postgresql"
        self._outage_logged = -OUTAGE_LOG_EVERY_S
        self.local_listeners: list[Callable[[str, str], None]] = []  # SQLite's notifications

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        """A transaction: committed at the end (then its notifications go out), rolled back on
        an exception."""
        with self._translated(), self.engine.begin() as conn:
            conn.info["notices"] = []
            yield conn
            notices = conn.info.pop("notices")
        for channel, payload in notices:  # SQLite: after the commit, as NOTIFY delivers
            for listener in list(self.local_listeners):
                listener(channel, payload)

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self._translated(), self.engine.connect() as conn:
            yield conn

    def first(self, query: sa.Executable) -> dict | None:
        """The first row `query` reads, as a dict (None: no row)."""
        with self.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def rows(self, query: sa.Executable) -> list[dict]:
        """Every row `query` reads, as dicts."""
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    @contextmanager
    def migration_lock(self) -> Iterator[sa.Connection]:
        """A transaction that only one replica at a time holds (creating, upgrading)."""
        with self.tx() as conn:
            if self.postgres:
                conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            yield conn

    def notify(self, conn: sa.Connection, channel: str, payload: str = "") -> None:
        """Tell every replica's listeners of `channel`, once `conn`'s transaction commits."""
        if self.postgres:
            query = sa.text("SELECT pg_notify(:channel, :payload)")
            conn.execute(query, {"channel": channel, "payload": payload})
        else:
            conn.info["notices"].append((channel, payload))

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
        with self.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
