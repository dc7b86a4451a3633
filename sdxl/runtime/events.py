"""A stored job changed: its webhook gets the event, if its filter lets it through, and the
callers waiting for its end here are woken.

What a webhook carries is the API's object for the job (Replicate's prediction or training):
the API hands its renderers in, so that this layer knows the store and not the wire format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from sdxl.runtime.completions import Completions
from sdxl.runtime.kinds import TRAINING
from sdxl.runtime.webhooks import Webhooks
from sdxl.store.errors import StoreUnavailable
from sdxl.store.store import Store

Render = Callable[[dict, str], dict]  # (stored row, base URL) -> the API's object


class Events:
    def __init__(
        self,
        store: Store,
        webhooks: Webhooks,
        renderers: dict[str, Render],
        public_url: str | None,
        completions: Completions,
    ):
        self.store = store
        self.webhooks = webhooks
        self.renderers = renderers  # by kind
        self.public_url = public_url
        self.completions = completions

    def rows(self, kind: str):
        return self.store.trainings if kind == TRAINING else self.store.predictions

    def changed(self, kind: str, job_id: str, event: str) -> None:
        """`event` (start, logs, output, completed) happened to the stored job `job_id`. While
        the store is away, progress events are skipped (the completed one is sent once the
        result is stored, which waits for the store)."""
        if event == "completed":
            self.completions.ended(job_id)
        rows = self.rows(kind)
        row = None
        with contextlib.suppress(StoreUnavailable):
            row = rows.get(job_id)
        if row is None or not row["webhook"]:
            return
        base = self.public_url or row.get("origin") or ""
        render = self.renderers[kind]
        self.webhooks.send(
            job_id,
            row["webhook"],
            event,
            row["webhook_events_filter"],
            lambda: render(rows.get(job_id), base),
            tenant=row.get("tenant"),
        )
