"""The Replicate API's calls that change predictions: create (checked, then handed to the job
runtime with the Request it checked), cancel."""

from __future__ import annotations

from sdxl.http.replicate.catalogue import Version
from sdxl.http.replicate.inputs import REPLICATE, WIRE
from sdxl.http.wire import checked
from sdxl.inputs.surface import InvalidInputs, Problem
from sdxl.runtime.kinds import PREDICTION
from sdxl.runtime.runtime import JobRuntime
from sdxl.runtime.webhooks import check_webhook
from sdxl.settings import Caps
from sdxl.store.tables import new_id


class Predictions:
    def __init__(self, runtime: JobRuntime, caps: Caps):
        self.runtime = runtime
        self.caps = caps

    def create(self, version: Version, body: dict, origin: str, tenant: str, loras=None) -> dict:
        """Store and queue `tenant`'s prediction; InvalidInputs names every field at fault,
        the LoRAs included (`loras`: `Service.lora_check` for `tenant`), and nothing is
        stored then."""
        problems: list[Problem] = []
        raw = body.get("input")
        found = None
        if not isinstance(raw, dict):
            problems.append(Problem("input", "must be a JSON object of the model's inputs"))
        else:
            try:
                found = checked(raw, REPLICATE, WIRE, self.caps, loras)
            except InvalidInputs as err:
                problems += [Problem(f"input.{p.field}", p.message) for p in err.problems]
        webhook, wanted = body.get("webhook"), body.get("webhook_events_filter")
        problems += check_webhook(webhook, wanted)
        if problems:
            raise InvalidInputs(problems)
        row = {
            "id": new_id(),
            "model": version.model,
            "version": version.id,
            "input": found.given,
            "webhook": webhook,
            "webhook_events_filter": wanted,
            "origin": origin,
            "tenant": tenant,
        }
        return self.runtime.create_prediction(row, found.request())

    def cancel(self, prediction_id: str) -> None:
        self.runtime.cancel(PREDICTION, prediction_id)
