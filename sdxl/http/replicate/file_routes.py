"""Replicate's files API (the clients upload local files there and pass their URL as an input),
the outputs served by URL (predictions' and OpenAI's url images: no key, the URL is secret,
the bytes streamed from the files backend), and the webhook signing secret."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import FileResponse, JSONResponse

from sdxl.http.auth import caller_of
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.common import ReplicateError, not_found, origin, whose
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import ReplicateRoute


def file_routes(api: ReplicateApi, settings: Settings) -> APIRouter:
    routes = APIRouter(route_class=ReplicateRoute)
    store, render = api.store, api.renderer
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
            store.files.add,
            (content.filename or "file")[:255],
            content.content_type or "application/octet-stream",
            data,
            metadata,
            caller_of(http),
        )
        return JSONResponse(render.file(row, origin(http, settings)), status_code=201)

    @routes.get("/v1/files/{file_id}", summary="Get an uploaded file's description")
    def get_file(file_id: str, http: HttpRequest) -> dict:
        row = store.files.get(file_id, whose(http))
        if row is None:
            raise not_found(f"the file {file_id[:40]!r}")
        return render.file(row, origin(http, settings))

    @routes.get("/v1/webhooks/default/secret", summary="The key webhooks are signed with")
    def webhook_secret(http: HttpRequest) -> dict:
        return {"key": api.runtime.webhooks.secret_for(caller_of(http))}

    @routes.get("/outputs/{token}/{name}", summary="An output file (no key: the URL is secret)")
    def output_file(token: str, name: str) -> FileResponse:
        row = store.predictions.output_by_token(token) or store.files.image_by_token(token)
        if row is None or row["name"] != name or not store.blobs.exists(row["key"]):
            raise not_found("the output")
        return FileResponse(store.blobs.path(row["key"]), media_type=row["content_type"])

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
