"""A prediction or a training changed: its webhook gets the event, if its filter lets it through."""

from __future__ import annotations

import contextlib

from sdxl.http.replicate.render import Renderer
from sdxl.http.replicate.webhooks import Webhooks
from sdxl.store.errors import StoreUnavailable
from sdxl.store.store import Store


class Events:
    def __init__(self, store: Store, renderer: Renderer, webhooks: Webhooks):
        self.store = store
        self.renderer = renderer
        self.webhooks = webhooks

    def changed(self, prediction_id: str, event: str) -> None:
        """`event` (start, logs, output, completed) happened to `prediction_id`. While the store
        is away, progress events are skipped (the completed one is sent once the result is
        stored, which waits for the store)."""
        row = None
        with contextlib.suppress(StoreUnavailable):
            row = self.store.predictions.get(prediction_id)
        if row is None or not row["webhook"]:
            return
        base = self.renderer.public_url or row.get("origin") or ""
        self.webhooks.send(
            prediction_id,
            row["webhook"],
            event,
            row["webhook_events_filter"],
            lambda: self.renderer.prediction(self.store.predictions.get(prediction_id), base),
            tenant=row.get("tenant"),
        )

    def training_changed(self, training_id: str, event: str) -> None:
        """`event` (start, logs, output, completed) happened to `training_id`, as above."""
        row = None
        with contextlib.suppress(StoreUnavailable):
            row = self.store.trainings.get(training_id)
        if row is None or not row["webhook"]:
            return
        base = self.renderer.public_url or row.get("origin") or ""
        self.webhooks.send(
            training_id,
            row["webhook"],
            event,
            row["webhook_events_filter"],
            lambda: self.renderer.training(self.store.trainings.get(training_id), base),
            tenant=row.get("tenant"),
        )
