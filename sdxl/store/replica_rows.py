"""The replicas of one store in its tables: their heartbeats, and what happens to the claims of
one that stopped (died, drained, restarted). Whatever becomes claimable again is announced on
the JOBS channel, each prediction failed for a dead or restarted replica on ENDS. A training is
never failed for its replica's end: it is queued again with its last checkpoint, for another
replica (or this one, restarted) to go on from."""

from __future__ import annotations

import time
from collections.abc import Collection

import sqlalchemy as sa

from sdxl.store.db import Database
from sdxl.store.prediction_rows import Predictions
from sdxl.store.tables import ENDED, QUEUED, predictions, replicas, trainings
from sdxl.store.training_rows import Trainings


class ReplicaRows:
    def __init__(self, db: Database, predictions_rows: Predictions, trainings_rows: Trainings):
        self.db = db
        self.predictions = predictions_rows
        self.trainings = trainings_rows

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
        """Replicas `names` died: the predictions they ran failed with `message` (ENDS told
        once per prediction), their trainings and the predictions they had claimed but not
        started are queued again, their rows go. (failed, requeued)"""
        with self.db.tx() as conn:
            failed = self.predictions.fail_running(
                conn, [predictions.c.claimed_by.in_(names)], message
            )
            requeued = 0
            for rows in (self.predictions, self.trainings):
                requeued += rows.requeue(conn, [rows.table.c.claimed_by.in_(names)])
            conn.execute(replicas.delete().where(replicas.c.name.in_(names)))
        return failed, requeued

    def leave(self, replica: str) -> None:
        """`replica` stops cleanly (it holds no claim any more)."""
        with self.db.tx() as conn:
            conn.execute(replicas.delete().where(replicas.c.name == replica))

    def release(
        self, replica: str, *, since: float | None = None, keep: Collection[str] = ()
    ) -> int:
        """The jobs `replica` claimed and did not start are queued again, for another replica
        or the next start (a running training it still holds stays): all of them when it
        stops; after a claim whose answer was lost, those claimed at or after `since` but for
        `keep` (the ones it holds). How many."""
        requeued = 0
        with self.db.tx() as conn:
            for rows in (self.predictions, self.trainings):
                c = rows.table.c
                where = [c.claimed_by == replica, c.status == QUEUED]
                if since is not None:
                    where.append(c.claimed_at >= since)
                if keep:
                    where.append(c.id.not_in(list(keep)))
                requeued += rows.requeue(conn, where)
        return requeued

    def recover(self, message: str) -> tuple[int, int]:
        """After a restart of the only replica: the predictions that were running failed (ENDS
        told once per prediction), the trainings and the predictions claimed but not started
        are queued again. (failed, requeued)"""
        with self.db.tx() as conn:
            failed = self.predictions.fail_running(conn, [], message)
            requeued = self.predictions.requeue(conn, []) + self.trainings.requeue(conn, [])
        return failed, requeued
