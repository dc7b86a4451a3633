"""Where submitted jobs wait until the engine claims them.

The engine talks to one `JobQueue`. `MemoryQueue` is the in-process FIFO every API of one
process shares; `SharedQueue` (`sdxl.runtime.shared_queue`) adds jobs stored in a database that
outlives the process and may be shared by many replicas.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from sdxl.engine.jobs import Job


def never() -> bool:
    """A claim's default `stale`: what it asks for never changes while it waits."""
    return False


class JobQueue(Protocol):
    def put(self, job: Job) -> None:
        """Accept `job`; it waits behind the jobs put before it."""

    def claim(self, timeout: float, *, stored=True, ahead=False, stale=never) -> Job | None:
        """The oldest waiting job, now the caller's; None if none came within `timeout` s, or
        as soon as `stale()` is true once no job is found (checked at each `wake`: what the
        caller asks for changed, and it asks again). `stored=False`: only jobs in this
        process's memory (the engine takes no stored job while it is draining or broken;
        other replicas, or the next start, take them).
        `ahead`: the engine runs a job already (a queue shared by replicas leaves new jobs a
        moment to replicas with a free GPU)."""

    def discard(self, job: Job) -> bool:
        """Take `job` out if it is still waiting (a cancel); True if it was."""

    def waiting(self, *, stored: bool = True) -> int:
        """How many jobs wait for this engine (`stored` as in `claim`)."""

    def wake(self) -> None:
        """What the engine may take changed (it started or stopped running a job, became ready
        or broken, drains or closes): a claim under way looks at its `stale()` now."""

    def release_claims(self) -> None:
        """The engine stops: the stored jobs it claimed and did not start wait again for
        another replica or the next start (their end here is not theirs)."""


class MemoryQueue:
    """A first-in first-out queue in this process's memory (`SharedQueue` takes its tenants in
    turn through `heads` and `discard`)."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()

    def put(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def claim(self, timeout: float, *, stored=True, ahead=False, stale=never) -> Job | None:
        with self._cond:
            self._cond.wait_for(lambda: self._jobs or stale(), timeout)
            return self._jobs.popleft() if self._jobs else None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def heads(self) -> dict[str | None, Job]:
        """Each tenant's oldest waiting job."""
        with self._cond:
            found: dict[str | None, Job] = {}
            for job in self._jobs:
                found.setdefault(job.tenant, job)
            return found

    def discard(self, job: Job) -> bool:
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return False
            return True

    def waiting(self, *, stored: bool = True) -> int:
        with self._cond:
            return len(self._jobs)

    def release_claims(self) -> None:
        """Nothing is stored: the jobs in memory end with the process."""
