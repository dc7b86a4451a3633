"""The caller's trained models as OpenAI's and AUTOMATIC1111's APIs name them: a destination
model's `owner/name` (Replicate's trainings make them), run with its latest version's weights.
Another tenant's are neither listed nor accepted, exactly as a name that does not exist."""

from __future__ import annotations

from fastapi import Request as HttpRequest

from sdxl.http.auth import caller
from sdxl.store.store import Store
from sdxl.store.tables import ANY


class TrainedModels:
    def __init__(self, store: Store | None):
        self.store = store  # None: the server keeps no store, so no trained models

    def names(self, http: HttpRequest) -> list[str]:
        """The caller's destination models that have a version, oldest first."""
        if self.store is None:
            return []
        rows = self.store.destinations.of(_scope(http))
        return [
            f"{row['owner']}/{row['name']}"
            for row in rows
            if self.store.destinations.latest(row["owner"], row["name"]) is not None
        ]

    def weights(self, name: object, http: HttpRequest) -> str | None:
        """The trained_model.tar that `name` runs with, if it is one of the caller's trained
        models (None: it is not)."""
        if self.store is None or not isinstance(name, str) or name.count("/") != 1:
            return None
        owner, model = name.split("/")
        if self.store.destinations.get(owner, model, _scope(http)) is None:
            return None
        latest = self.store.destinations.latest(owner, model)
        return None if latest is None else str(self.store.blobs.path(latest["weights_key"]))


def _scope(http: HttpRequest):
    found = caller(http)
    return ANY if found.admin else found.tenant
