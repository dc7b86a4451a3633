"""Replicate's training paths: a destination model created, a training created on one of the
served model's versions, got, listed (newest first), cancelled, its trained weights, and the
checkpoint of one that stopped early (cancelled or failed after a step), to go on from."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import FileResponse, JSONResponse

from sdxl.http.auth import caller
from sdxl.http.errors import retry_after
from sdxl.http.replicate import common
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.common import ReplicateError, not_found
from sdxl.http.replicate.trainings import MISSING_DESTINATION, DestinationMissing, NotYours
from sdxl.http.server_settings import Settings
from sdxl.http.service import Service
from sdxl.http.shapes import ReplicateRoute
from sdxl.inputs.surface import InvalidInputs
from sdxl.runtime.kinds import TRAINING
from sdxl.runtime.webhooks import EVENTS
from sdxl.store.errors import StoreFull
from sdxl.store.training_rows import STOPPED
from sdxl.train.options import TRAIN_INPUTS

MODEL_BODY = {
    "type": "object",
    "properties": {
        "owner": {"type": "string"},
        "name": {"type": "string"},
        "visibility": {"enum": ["public", "private"]},
        "hardware": {"type": "string"},
        "description": {"type": "string"},
    },
    "required": ["owner", "name", "visibility", "hardware"],
}
TRAINING_BODY = {
    "type": "object",
    "properties": {
        "destination": {"type": "string"},
        "input": {
            "type": "object",
            "properties": {name: {} for name in TRAIN_INPUTS},
            "required": ["input_images"],
        },
        "webhook": {"type": "string", "format": "uri"},
        "webhook_events_filter": {"type": "array", "items": {"enum": list(EVENTS)}},
    },
    "required": ["destination", "input"],
}


def training_routes(api: ReplicateApi, service: Service, settings: Settings) -> APIRouter:
    routes = APIRouter(route_class=ReplicateRoute)
    rows, trainings = api.store.trainings, api.trainings
    render, catalogue = api.renderer, api.catalogue

    def owned(training_id: str, http: HttpRequest) -> dict:
        row = rows.get(training_id, common.whose(http))
        if row is None:
            raise not_found(f"the training {training_id[:40]!r}")
        return row

    @routes.get("/v1/account", summary="The caller's account: its name owns its models")
    def account(http: HttpRequest) -> dict:
        name = caller(http).tenant
        return {"type": "user", "username": name, "name": name, "github_url": None}

    @routes.post(
        "/v1/models", status_code=201, summary="Create a model (a destination for trainings)"
    )
    async def create_model(http: HttpRequest) -> JSONResponse:
        body = await common.json_body(http)
        who = caller(http)
        try:
            row = await asyncio.to_thread(trainings.create_model, body, who.tenant, who.admin)
        except InvalidInputs as err:
            raise common.invalid(err) from None
        except NotYours:
            detail = f"you can create models only under your own name, {who.tenant!r}"
            raise ReplicateError(403, "Forbidden", detail) from None
        if row is None:
            detail = f"a model {body['owner']}/{body['name']} already exists"
            raise ReplicateError(409, "Conflict", detail)
        rendered = catalogue.destination_json(row, None, common.origin(http, settings))
        return JSONResponse(rendered, status_code=201)

    @routes.post(
        "/v1/models/{owner}/{name}/versions/{version_id}/trainings",
        status_code=201,
        summary="Create a training of a version into a destination model",
        openapi_extra=common.json_body_doc(TRAINING_BODY),
    )
    async def create_training(owner: str, name: str, version_id: str, http: HttpRequest):
        common.accepting(service, "trainings")
        model = catalogue.model(owner, name)
        version = catalogue.version(version_id, model) if model else None
        if version is None:
            raise not_found(f"the version {owner}/{name}:{version_id[:70]}")
        body = await common.json_body(http)
        base = common.origin(http, settings)
        origins = tuple(o for o in (base, settings.public_url) if o)
        try:
            row = await asyncio.to_thread(
                trainings.create, version, body, base, caller(http), origins
            )
        except DestinationMissing:
            raise ReplicateError(404, "Not found", MISSING_DESTINATION) from None
        except InvalidInputs as err:
            raise common.invalid(err) from None
        except StoreFull as err:
            detail = (
                f"{err.waiting} trainings of this API key are queued or running, the most this "
                "server allows (SDXL_MAX_TRAININGS_PER_KEY); wait for one to end"
            )
            raise ReplicateError(
                429, "Too many trainings", detail, headers=retry_after(60)
            ) from None
        return JSONResponse(render.training(row, base), status_code=201)

    @routes.get("/v1/trainings/{training_id}", summary="Get a training")
    def get_training(training_id: str, http: HttpRequest) -> dict:
        return render.training(owned(training_id, http), common.origin(http, settings))

    @routes.get("/v1/trainings", summary="List trainings, newest first")
    def list_trainings(http: HttpRequest, cursor: str | None = None) -> dict:
        return common.page_of(rows, http, settings, "/v1/trainings", render.training)

    @routes.post("/v1/trainings/{training_id}/cancel", summary="Cancel a training")
    async def cancel_training(training_id: str, http: HttpRequest) -> dict:
        await asyncio.to_thread(owned, training_id, http)
        await asyncio.to_thread(trainings.cancel, training_id)
        # A running one stops at its next step.
        row = await api.runtime.until_ended(TRAINING, training_id, common.CANCEL_WAIT_S)
        if row is None:  # ended and expired meanwhile
            raise not_found(f"the training {training_id[:40]!r}")
        return render.training(row, common.origin(http, settings))

    @routes.get(
        "/v1/trainings/{training_id}/weights",
        summary="A succeeded training's trained_model.tar",
    )
    def training_weights(training_id: str, http: HttpRequest) -> FileResponse:
        row = owned(training_id, http)
        version = api.store.destinations.find_version(training_id)
        if row["status"] != "succeeded" or version is None:
            raise not_found(f"the weights of training {training_id[:40]!r}")
        path = api.store.blobs.path(version["weights_key"])
        return FileResponse(path, media_type="application/x-tar", filename="trained_model.tar")

    @routes.get(
        "/v1/trainings/{training_id}/checkpoint",
        summary="A cancelled or failed training's last checkpoint, for resume_from_checkpoint",
    )
    def training_checkpoint(training_id: str, http: HttpRequest) -> FileResponse:
        row = owned(training_id, http)
        key = row["checkpoint_key"] if row["status"] in STOPPED else None
        path = None if key is None else api.store.blobs.path(key)
        if path is None or not path.is_file():  # none kept, or replaced by a newer one's
            raise not_found(f"the checkpoint of training {training_id[:40]!r}")
        name = f"checkpoint-step-{row['checkpoint_step']}.tar"
        return FileResponse(path, media_type="application/x-tar", filename=name)

    return routes
