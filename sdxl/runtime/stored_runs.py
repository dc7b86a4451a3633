"""What stored predictions and trainings share on the engine: their start written as this
replica's (a claim lost meanwhile cancels the job), their logs written at most every
LOG_FLUSH_S, and their ends stored in order on one writer thread that a stop drains."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from sdxl.engine import Job
from sdxl.runtime.events import Events
from sdxl.store.errors import StoreUnavailable
from sdxl.store.store import Store

LOG_FLUSH_S = 0.5  # logs are written to the store (and sent to webhooks) at most this often


class StoredRuns:
    """One kind of stored job (`kind`) on this replica; `lost_claim` is what a job whose claim
    another replica took is cancelled with."""

    kind: str
    lost_claim: str

    def __init__(self, store: Store, events: Events, replica: str, writer: str):
        self.store = store
        self.events = events
        self.replica = replica
        self.rows = events.rows(self.kind)
        self._writes = ThreadPoolExecutor(1, thread_name_prefix=writer)  # ends, in order
        self._flushed: dict[str, float] = {}

    def _started(self, job: Job) -> None:
        try:
            if not self.rows.started(job.id, self.replica):
                job.cancel(self.lost_claim)
                return
        except StoreUnavailable:  # it runs; its start is written with its end
            return
        self.events.changed(self.kind, job.id, "start")

    def _log_due(self, job: Job) -> bool:
        """Whether the job's logs are to be written now (at most every LOG_FLUSH_S)."""
        now = time.monotonic()
        if now - self._flushed.get(job.id, 0.0) < LOG_FLUSH_S:
            return False
        self._flushed[job.id] = now
        return True

    def _ended(self, job: Job, store_end, *args) -> None:
        """The job ended (the delivery thread): its end is stored on the writer thread."""
        self._flushed.pop(job.id, None)
        self._writes.submit(store_end, job, *args)

    def _drain_writes(self, timeout: float) -> None:
        """Wait up to `timeout` s for the ends queued before now."""
        done = self._writes.submit(lambda: None)  # behind everything queued before it
        with contextlib.suppress(TimeoutError):
            done.result(timeout)


def log_text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
