"""Replicate's prediction paths: create (on a version, or a model's latest), get, list, cancel,
and the running prediction's preview."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.http.auth import caller_of
from sdxl.http.caps import inline_input_schema
from sdxl.http.errors import retry_after
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.catalogue import Version
from sdxl.http.replicate.common import (
    CANCEL_WAIT_S,
    ReplicateError,
    accepting,
    invalid,
    json_body,
    json_body_doc,
    not_found,
    origin,
    page_of,
    prefer_wait,
    whose,
)
from sdxl.http.server_settings import Settings
from sdxl.http.service import Service
from sdxl.http.shapes import ReplicateRoute
from sdxl.inputs.surface import InvalidInputs
from sdxl.runtime.kinds import PREDICTION
from sdxl.runtime.webhooks import EVENTS
from sdxl.store.errors import StoreFull
from sdxl.store.tables import ENDED

EARLY_S = 0.5  # answer a wait this much before it runs out (the Python client reads 60.5 s)


def queue_full(err: StoreFull, settings: Settings) -> ReplicateError:
    """The 429 of a full queue, naming the bound it hit and its setting."""
    limits = settings.store
    if err.per_tenant:
        most = (
            f"{err.waiting} predictions of this API key are already queued, the most one key may "
            f"queue ({limits.max_queued_per_tenant}, SDXL_MAX_QUEUED_PER_KEY; by default half "
            "of SDXL_MAX_QUEUED_PREDICTIONS when the server has several keys)"
        )
    else:
        most = (
            f"{err.waiting} predictions are already queued, the most this server keeps "
            f"({limits.max_queued}, SDXL_MAX_QUEUED_PREDICTIONS)"
        )
    return ReplicateError(
        429, "Too many predictions", f"{most}; retry later", headers=retry_after(30)
    )


def prediction_routes(api: ReplicateApi, service: Service, settings: Settings) -> APIRouter:
    routes = APIRouter(route_class=ReplicateRoute)
    rows, catalogue = api.store.predictions, api.catalogue
    predictions, render = api.predictions, api.renderer

    async def create(http: HttpRequest, version, body: dict) -> JSONResponse:
        accepting(service, "predictions")
        base = origin(http, settings)
        try:
            tenant = caller_of(http)
            loras = service.lora_check(tenant)
            row = await asyncio.to_thread(predictions.create, version, body, base, tenant, loras)
        except InvalidInputs as err:
            raise invalid(err) from None
        except StoreFull as err:
            raise queue_full(err, settings) from None
        status = None
        wait = prefer_wait(http.headers.get("prefer"))
        if wait is not None:
            # None: it ended and was expired meanwhile (a store bounded by count)
            row = await api.runtime.until_ended(PREDICTION, row["id"], wait - EARLY_S) or row
            if row["status"] not in ENDED:
                status = "starting"  # Replicate's answer to a wait that ran out
        rendered = await asyncio.to_thread(render.prediction, row, base, status)
        return JSONResponse(rendered, status_code=201)

    body_schema = {
        "type": "object",
        "properties": {
            "version": {
                "type": "string",
                "enum": sorted({v for vs in catalogue.served.values() for v in vs}),
            },
            "input": inline_input_schema(catalogue.schema),
            "webhook": {"type": "string", "format": "uri"},
            "webhook_events_filter": {"type": "array", "items": {"enum": list(EVENTS)}},
        },
        "required": ["version", "input"],
    }
    model_body = {**body_schema, "required": ["input"]}
    model_body["properties"] = {
        k: v for k, v in body_schema["properties"].items() if k != "version"
    }

    @routes.post(
        "/v1/predictions",
        status_code=201,
        summary="Create a prediction",
        openapi_extra=json_body_doc(body_schema),
    )
    async def create_prediction(http: HttpRequest) -> JSONResponse:
        body = await json_body(http)
        text = body.get("version")
        version = None
        if isinstance(text, str):
            version = catalogue.version(text) or await asyncio.to_thread(trained, text, http)
        if version is None:
            raise ReplicateError(
                422,
                "Invalid version or not permitted",
                f"the version {str(text)[:100]!r} does not exist on this server; use "
                f"{catalogue.own_version} or another version of GET /v1/models/<owner>/<name>",
            )
        return await create(http, version, body)

    @routes.post(
        "/v1/models/{owner}/{name}/predictions",
        status_code=201,
        summary="Create a prediction of a model's latest version",
        openapi_extra=json_body_doc(model_body),
    )
    async def create_model_prediction(owner: str, name: str, http: HttpRequest):
        model = catalogue.model(owner, name)
        if model is not None:
            return await create(http, catalogue.latest(model), await json_body(http))
        scope = whose(http)
        if await asyncio.to_thread(api.store.destinations.get, owner, name, scope) is None:
            raise not_found(f"the model {owner}/{name}")
        latest = await asyncio.to_thread(api.store.destinations.latest, owner, name)
        if latest is None:
            raise ReplicateError(
                404, "Not found", f"the model {owner}/{name} has no version yet: train it first"
            )
        return await create(http, Version(latest["id"], f"{owner}/{name}"), await json_body(http))

    def trained(text: str, http: HttpRequest) -> Version | None:
        """A version of one of the caller's destination models (owner/name:id, or its id)."""
        found = api.store.destinations.find_version(text[:300], whose(http))
        return None if found is None else Version(found["id"], f"{found['owner']}/{found['name']}")

    @routes.get("/v1/predictions/{prediction_id}", summary="Get a prediction")
    def get_prediction(prediction_id: str, http: HttpRequest) -> dict:
        row = rows.get(prediction_id, whose(http))
        if row is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        return render.prediction(row, origin(http, settings))

    @routes.get(
        "/v1/predictions/{prediction_id}/preview",
        summary="The running prediction's latest preview (JPEG; 204 before the first)",
    )
    def get_preview(prediction_id: str, http: HttpRequest) -> Response:
        if rows.get(prediction_id, whose(http)) is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        api.runtime.want_previews(prediction_id)  # previews are made only while read
        preview = rows.preview_of(prediction_id)
        if preview is None:
            return Response(status_code=204)
        headers = {"X-Preview-Step": str(preview["step"]), "X-Preview-Total": str(preview["total"])}
        headers["X-Preview-Stage"] = preview["stage"]
        return Response(preview["data"], media_type="image/jpeg", headers=headers)

    @routes.get("/v1/predictions", summary="List predictions, newest first")
    def list_predictions(http: HttpRequest, cursor: str | None = None) -> dict:
        return page_of(rows, http, settings, "/v1/predictions", render.prediction)

    @routes.post("/v1/predictions/{prediction_id}/cancel", summary="Cancel a prediction")
    async def cancel_prediction(prediction_id: str, http: HttpRequest) -> dict:
        if await asyncio.to_thread(rows.get, prediction_id, whose(http)) is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        await asyncio.to_thread(predictions.cancel, prediction_id)
        # A running one stops at its next step.
        row = await api.runtime.until_ended(PREDICTION, prediction_id, CANCEL_WAIT_S)
        if row is None:  # ended and expired meanwhile
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        return await asyncio.to_thread(render.prediction, row, origin(http, settings))

    return routes
