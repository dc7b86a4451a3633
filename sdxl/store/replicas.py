"""The replicas of one store in its tables: their heartbeats, and what happens to the claims of
one that stopped (died, drained, restarted). Whatever becomes claimable again is announced on
the JOBS channel. A training is never failed for its replica's end: it is queued again with its
last checkpoint, for another replica (or this one, restarted) to go on from."""

from __future__ import annotations

import time
from collections.abc import Collection

import sqlalchemy as sa

from sdxl.store.db import Database
from sdxl.store.predictions import JOBS
from sdxl.store.tables import (
    ENDED,
    QUEUED,
    RUNNING,
    PredictionStatus,
    predictions,
    replicas,
    trainings,
)


class ReplicaRows:
    def __init__(self, db: Database, trainings_rows):
        self.db = db
        self.trainings = trainings_rows  # sdxl.store.trainings.Trainings

    def beat(self, replica: str) -> None:
        """`replica` is alive: count its heartbeat up."""
        with self.db.tx() as conn:
            found = conn.execute(
                replicas.update()
                .where(replicas.c.name == replica)
                .values(beats=replicas.c.beats + 1, seen_at=time.time())
            ).rowcount
            if not found:
                conn.execute(replicas.insert().values(name=replica, beats=1, seen_at=time.time()))

    def heartbeats(self) -> dict[str, int | None]:
        """Every replica that beats or holds a claim, with its beat count (None: no row)."""
        with self.db.read() as conn:
            beats = dict(conn.execute(sa.select(replicas.c.name, replicas.c.beats)).all())
            holders = set()
            for table in (predictions, trainings):
                holders |= set(
                    conn.execute(
                        sa.select(table.c.claimed_by)
                        .where(table.c.claimed_by.is_not(None), table.c.status.not_in(ENDED))
                        .distinct()
                    ).scalars()
                )
        return {**dict.fromkeys(holders), **beats}

    def abandon(self, names: list[str], message: str) -> tuple[int, int]:
        """Replicas `names` died: what they ran failed with `message`, what they had claimed
        but not started is queued again, their rows go. (failed, requeued)"""
        now = time.time()
        with self.db.tx() as conn:
            failed = conn.execute(
                predictions.update()
                .where(predictions.c.claimed_by.in_(names), predictions.c.status == RUNNING)
                .values(
                    status=PredictionStatus.FAILED, error=message, completed_at=now, claimed_by=None
                )
            ).rowcount
            requeued = self._requeue(conn, [predictions.c.claimed_by.in_(names)])
            requeued += self.trainings.requeue(conn, [trainings.c.claimed_by.in_(names)])
            conn.execute(replicas.delete().where(replicas.c.name.in_(names)))
        return failed, requeued

    def leave(self, replica: str) -> None:
        """`replica` stops cleanly (it holds no claim any more)."""
        with self.db.tx() as conn:
            conn.execute(replicas.delete().where(replicas.c.name == replica))

    def release(
        self, replica: str, *, since: float | None = None, keep: Collection[str] = ()
    ) -> int:
        """The predictions `replica` claimed and did not start are queued again, for another
        replica or the next start: all of them when it stops; after a claim whose answer was
        lost, those claimed at or after `since` but for `keep` (the ones it holds). How many."""
        requeued = 0
        with self.db.tx() as conn:
            for table, requeue in ((predictions, self._requeue), (trainings, self._trainings)):
                where = [table.c.claimed_by == replica]
                if since is not None:
                    where.append(table.c.claimed_at >= since)
                if keep:
                    where.append(table.c.id.not_in(list(keep)))
                requeued += requeue(conn, where)
        return requeued

    def recover(self, message: str) -> tuple[int, int]:
        """After a restart of the only replica: what was running failed, what was claimed
        but not started is queued again. (failed, requeued)"""
        now = time.time()
        with self.db.tx() as conn:
            failed = conn.execute(
                predictions.update()
                .where(predictions.c.status == RUNNING)
                .values(
                    status=PredictionStatus.FAILED, error=message, completed_at=now, claimed_by=None
                )
            ).rowcount
            requeued = self._requeue(conn, [predictions.c.claimed_by.is_not(None)])
            requeued += self.trainings.requeue(conn, [])
        return failed, requeued

    def _trainings(self, conn: sa.Connection, where: list) -> int:
        """Only those not started: a running one that this replica still holds stays."""
        return self.trainings.requeue(conn, [trainings.c.status == QUEUED, *where])

    def _requeue(self, conn: sa.Connection, where: list) -> int:
        count = conn.execute(
            predictions.update()
            .where(predictions.c.status == QUEUED, *where)
            .values(claimed_by=None)
        ).rowcount
        if count:
            self.db.notify(conn, JOBS)
        return count
