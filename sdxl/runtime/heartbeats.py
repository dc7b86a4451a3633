"""Replicas of one shared store watching each other.

Each replica counts a heartbeat up in the store's `replicas` table. Every replica watches the
others' counts on its own monotonic clock (so clocks that disagree between machines do not
matter): one whose count has not moved for SDXL_REPLICA_TIMEOUT seconds is dead. What it was
running fails with a message that says so, what it had claimed but not started is queued again
for the living, and nothing runs twice: a replica that was only slow finds its claim gone when
it starts or ends the prediction, and lets go of it.
"""

from __future__ import annotations

import logging
import time

from sdxl.store.store import Store

log = logging.getLogger(__name__)

DEAD_MESSAGE = (
    "the server replica running this prediction stopped answering (it crashed, was killed or "
    "lost its database) before the prediction ended; create the prediction again"
)


class Heartbeats:
    def __init__(self, store: Store, name: str, timeout_s: float):
        self.store = store
        self.name = name
        self.timeout_s = timeout_s
        self._seen: dict[str, tuple[int | None, float]] = {}  # name: (beats, when they moved)

    @property
    def beat_every_s(self) -> float:
        return min(2.0, self.timeout_s / 5)

    def beat(self) -> None:
        self.store.replicas.beat(self.name)

    def reap(self) -> list[str]:
        """Settle the predictions of replicas that stopped beating; returns their names."""
        now = time.monotonic()
        beats = self.store.replicas.heartbeats()
        dead = []
        for name, count in beats.items():
            if name == self.name:
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != count:
                self._seen[name] = (count, now)
            elif now - seen[1] >= self.timeout_s:
                dead.append(name)
        for name in set(self._seen) - set(beats):
            del self._seen[name]  # it left cleanly, or another replica settled it
        if dead:
            failed, requeued = self.store.replicas.abandon(dead, DEAD_MESSAGE)
            for name in dead:
                self._seen.pop(name, None)
            log.warning(
                "replicas %s stopped beating: %d of their predictions failed, %d queued again",
                ", ".join(dead),
                failed,
                requeued,
            )
        return dead

    def forget(self) -> None:
        """This replica could not read the store: it saw no beat, which proves nothing. The
        watch starts over once the store answers again, so that an outage of the database
        never looks like the death of every other replica."""
        self._seen.clear()

    def leave(self) -> None:
        self.store.replicas.leave(self.name)
