"""The Replicate API's calls that change predictions: create (checked, stored, queued), cancel."""

from __future__ import annotations

from sdxl.engine.shared_queue import SharedQueue
from sdxl.http.replicate.events import Events
from sdxl.http.replicate.inputs import REPLICATE, WIRE
from sdxl.http.replicate.models import Version
from sdxl.http.replicate.webhooks import check_webhook
from sdxl.http.wire import checked
from sdxl.inputs.surface import InvalidInputs, Problem
from sdxl.settings import Caps
from sdxl.store.store import Store
from sdxl.store.tables import new_id


class Predictions:
    def __init__(self, store: Store, queue: SharedQueue, events: Events, caps: Caps):
        self.store = store
        self.queue = queue
        self.events = events
        self.caps = caps

    def create(self, version: Version, body: dict, origin: str, tenant: str) -> dict:
        """Store and queue `tenant`'s prediction; InvalidInputs names every field at fault."""
        problems: list[Problem] = []
        raw = body.get("input")
        given = {}
        if not isinstance(raw, dict):
            problems.append(Problem("input", "must be a JSON object of the model's inputs"))
        else:
            try:
                given = checked(raw, REPLICATE, WIRE, self.caps).given
            except InvalidInputs as err:
                problems += [Problem(f"input.{p.field}", p.message) for p in err.problems]
        webhook, wanted = body.get("webhook"), body.get("webhook_events_filter")
        problems += check_webhook(webhook, wanted)
        if problems:
            raise InvalidInputs(problems)
        row = self.store.predictions.create(
            {
                "id": new_id(),
                "model": version.model,
                "version": version.id,
                "input": given,
                "webhook": webhook,
                "webhook_events_filter": wanted,
                "origin": origin,
                "tenant": tenant,
            }
        )
        self.queue.created()
        if self.store.predictions.count() > self.store.limits.max_predictions:
            self.store.expire()  # over the count bound: the oldest ended ones go now
        return row

    def cancel(self, prediction_id: str) -> None:
        if self.store.predictions.request_cancel(prediction_id):  # it was still queued
            self.queue.withdrawn()
            self.events.changed(prediction_id, "completed")
            return
        job = self.queue.local(prediction_id)
        if job is not None:
            job.cancel("the prediction was cancelled")
        # claimed by another replica: it sees cancel_requested at its next poll
