"""What the store raises: its database away or its disk full (plain messages for the APIs'
503s, the driver's text kept for the operator's log only), or too many predictions waiting."""

from __future__ import annotations

import sqlalchemy as sa


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


class StoreFull(Exception):
    """Too many predictions wait already (`per_tenant`: of the tenant creating one)."""

    def __init__(self, waiting: int, per_tenant: bool = False):
        super().__init__(waiting)
        self.waiting = waiting
        self.per_tenant = per_tenant
