"""Replicate's HTTP API paths, answered as Replicate answers them (errors included), so that
`replicate.run` from the official Python and JavaScript clients works against this server."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

from fastapi import APIRouter, Response
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.http.auth import caller, caller_of
from sdxl.http.caps import inline_input_schema
from sdxl.http.errors import ApiError, retry_after
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.webhooks import EVENTS
from sdxl.http.service import ServerStatus, Service
from sdxl.http.settings import DRAINING_RETRY_AFTER_S, Settings
from sdxl.inputs.surface import InvalidInputs
from sdxl.store.store import ENDED, StoreFull
from sdxl.store.tables import ANY

DEFAULT_WAIT_S = 60.0
EARLY_S = 0.5  # answer a wait this much before it runs out (the Python client reads 60.5 s)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?:$|[,;\s])")


class ReplicateError(ApiError):
    """An error in Replicate's shape: {"title", "detail", "status"}."""

    def __init__(self, status: int, title: str, detail: str, **extra):
        super().__init__(detail, headers=extra.pop("headers", None))
        self.status, self.title, self.extra = status, title, extra

    def body(self) -> dict:
        return {"title": self.title, "detail": self.message, "status": self.status, **self.extra}


def not_found(what: str) -> ReplicateError:
    return ReplicateError(404, "Not found", f"{what} was not found on this server")


def prefer_wait(header: str | None) -> float | None:
    """Seconds to hold the answer for `Prefer: wait` or `Prefer: wait=N` (at most 60)."""
    if not header:
        return None
    match = _PREFER_WAIT.search(header.lower())
    if match is None:
        return None
    seconds = float(match.group(1)) if match.group(1) else DEFAULT_WAIT_S
    return max(1.0, min(seconds, DEFAULT_WAIT_S))


async def json_body(http: HttpRequest) -> dict:
    try:
        body = json.loads(await http.body() or b"{}")
    except ValueError as err:
        raise ReplicateError(400, "Invalid JSON", f"the body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ReplicateError(400, "Invalid JSON", "the body must be a JSON object")
    return body


def router(api: ReplicateApi, service: Service, settings: Settings) -> APIRouter:
    routes = APIRouter()
    store, catalogue, predictions, render = api.store, api.catalogue, api.predictions, api.renderer

    def origin(http: HttpRequest) -> str:
        return settings.public_url or str(http.base_url).rstrip("/")

    def whose(http: HttpRequest):
        """Whose predictions and files the caller sees: its tenant's (the admin key: all).
        Another tenant's answer 404, exactly as an id that does not exist."""
        found = caller(http)
        return ANY if found.admin else found.tenant

    def accepting() -> None:
        if service.status == ServerStatus.DRAINING:
            raise ReplicateError(
                503,
                "Service unavailable",
                "the server is shutting down and takes no new predictions; create it again",
                headers=retry_after(DRAINING_RETRY_AFTER_S),
            )
        if service.status == ServerStatus.FAILED:
            raise ReplicateError(503, "Service unavailable", str(service.reason))

    async def create(http: HttpRequest, version, body: dict) -> JSONResponse:
        accepting()
        base = origin(http)
        try:
            row = await asyncio.to_thread(predictions.create, version, body, base, caller_of(http))
        except InvalidInputs as err:
            lines = "".join(f"- {p.field}: {p.message}\n" for p in err.problems)
            fields = [{"field": p.field, "description": p.message} for p in err.problems]
            raise ReplicateError(
                422, "Input validation failed", lines, invalid_fields=fields
            ) from None
        except StoreFull as err:
            whose, setting = (
                ("of this API key ", "SDXL_MAX_QUEUED_PER_KEY")
                if err.per_tenant
                else ("", "SDXL_MAX_QUEUED_PREDICTIONS")
            )
            raise ReplicateError(
                429,
                "Too many predictions",
                f"{err.waiting} predictions {whose}are already queued, the most this server "
                f"keeps ({setting}); retry later",
                headers=retry_after(30),
            ) from None
        status = None
        wait = prefer_wait(http.headers.get("prefer"))
        if wait is not None:
            row = await _wait(row["id"], wait - EARLY_S, ANY)
            if row["status"] not in ENDED:
                status = "starting"  # Replicate's answer to a wait that ran out
        rendered = await asyncio.to_thread(render.prediction, row, base, status)
        return JSONResponse(rendered, status_code=201)

    async def _wait(prediction_id: str, seconds: float, tenant) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            row = await asyncio.to_thread(store.get, prediction_id, tenant)
            if row["status"] in ENDED or time.monotonic() >= deadline:
                return row
            await asyncio.sleep(0.1)

    body_schema = {
        "type": "object",
        "properties": {
            "version": {
                "type": "string",
                "enum": sorted({v for vs in catalogue.models.values() for v in vs}),
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

    def json_body_doc(schema: dict) -> dict:
        return {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
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
        version = catalogue.version(text) if isinstance(text, str) else None
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
        if model is None:
            raise not_found(f"the model {owner}/{name}")
        return await create(http, catalogue.latest(model), await json_body(http))

    @routes.get("/v1/predictions/{prediction_id}", summary="Get a prediction")
    def get_prediction(prediction_id: str, http: HttpRequest) -> dict:
        row = store.get(prediction_id, whose(http))
        if row is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        return render.prediction(row, origin(http))

    @routes.get(
        "/v1/predictions/{prediction_id}/preview",
        summary="The running prediction's latest preview (JPEG; 204 before the first)",
    )
    def get_preview(prediction_id: str, http: HttpRequest) -> Response:
        if store.get(prediction_id, whose(http)) is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        preview = store.preview_of(prediction_id)
        if preview is None:
            return Response(status_code=204)
        headers = {"X-Preview-Step": str(preview["step"]), "X-Preview-Total": str(preview["total"])}
        headers["X-Preview-Stage"] = preview["stage"]
        return Response(preview["data"], media_type="image/jpeg", headers=headers)

    @routes.get("/v1/predictions", summary="List predictions, newest first")
    def list_predictions(http: HttpRequest, cursor: str | None = None) -> dict:
        before = _decode_cursor(cursor)
        rows = store.page(before, settings.page_size + 1, whose(http))
        page, more = rows[: settings.page_size], len(rows) > settings.page_size
        base = origin(http)
        after = _encode_cursor(page[-1]["number"]) if more else None
        return {
            "previous": None,
            "next": f"{base}/v1/predictions?cursor={after}" if after else None,
            "results": [render.prediction(row, base) for row in page],
        }

    @routes.post("/v1/predictions/{prediction_id}/cancel", summary="Cancel a prediction")
    async def cancel_prediction(prediction_id: str, http: HttpRequest) -> dict:
        if await asyncio.to_thread(store.get, prediction_id, whose(http)) is None:
            raise not_found(f"the prediction {prediction_id[:40]!r}")
        await asyncio.to_thread(predictions.cancel, prediction_id)
        row = await _wait(prediction_id, 2.0, ANY)  # a running one stops at its next step
        return await asyncio.to_thread(render.prediction, row, origin(http))

    @routes.get("/v1/models/{owner}/{name}", summary="Get a model")
    def get_model(owner: str, name: str, http: HttpRequest) -> dict:
        model = catalogue.model(owner, name)
        if model is None:
            raise not_found(f"the model {owner}/{name}")
        return catalogue.model_json(model, origin(http))

    @routes.get("/v1/models/{owner}/{name}/versions/{version_id}", summary="Get a version")
    def get_version(owner: str, name: str, version_id: str) -> dict:
        model = catalogue.model(owner, name)
        version = catalogue.version(version_id, model) if model else None
        if version is None:
            raise not_found(f"the version {owner}/{name}:{version_id[:70]}")
        return version.to_json(catalogue.schema)

    file_form = {
        "type": "object",
        "properties": {
            "content": {"type": "string", "format": "binary"},
            "metadata": {"type": "string", "description": "A JSON object"},
        },
        "required": ["content"],
    }
    form_doc = {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": file_form}}}
    }

    @routes.post(
        "/v1/files", status_code=201, summary="Upload a file for an input", openapi_extra=form_doc
    )
    async def create_file(http: HttpRequest) -> JSONResponse:
        form = await http.form()
        content = form.get("content")
        if content is None or isinstance(content, str):
            raise ReplicateError(
                422, "Invalid file", "send the file as the multipart part named content"
            )
        metadata = await _metadata(form.get("metadata"))
        data = await content.read()
        row = await asyncio.to_thread(
            store.add_file,
            (content.filename or "file")[:255],
            content.content_type or "application/octet-stream",
            data,
            metadata,
            caller_of(http),
        )
        return JSONResponse(render.file(row, origin(http)), status_code=201)

    @routes.get("/v1/files/{file_id}", summary="Get an uploaded file's description")
    def get_file(file_id: str, http: HttpRequest) -> dict:
        row = store.get_file(file_id, whose(http))
        if row is None:
            raise not_found(f"the file {file_id[:40]!r}")
        return render.file(row, origin(http))

    @routes.get("/v1/webhooks/default/secret", summary="The key webhooks are signed with")
    def webhook_secret(http: HttpRequest) -> dict:
        return {"key": api.webhooks.secret_for(caller_of(http))}

    @routes.get("/outputs/{token}/{name}", summary="An output file (no key: the URL is secret)")
    def output_file(token: str, name: str) -> Response:
        row = store.output_by_token(token)
        if row is None or row["name"] != name:
            raise not_found("the output")
        return Response(row["data"], media_type=row["content_type"])

    return routes


async def _metadata(part) -> dict:
    """The `metadata` part: a text field, or a file part (the JavaScript client sends one)."""
    if part is None:
        return {}
    raw = part if isinstance(part, str) else (await part.read()).decode("utf-8", "replace")
    try:
        metadata = json.loads(raw or "{}")
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ReplicateError(422, "Invalid file", "metadata must be a JSON object")
    return metadata


def _encode_cursor(number: int) -> str:
    return base64.urlsafe_b64encode(str(number).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        detail = "the cursor is not one this server gave"
        raise ReplicateError(400, "Invalid cursor", detail) from None
