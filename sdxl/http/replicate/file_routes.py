"""Replicate's files API (the clients upload local files there and pass their URL as an input),
the outputs served by URL (predictions' and OpenAI's url images: no key, the URL is secret,
the bytes streamed from the files backend), and the webhook signing secret.

An upload's body may be up to SDXL_MAX_UPLOAD_BYTES (not the JSON bodies' SDXL_MAX_BODY_BYTES):
counted as it arrives (413 as soon as it passes), spooled by the form parser to a temporary
file, then copied to the files backend in chunks; its tenant's share of the stored bytes
(SDXL_MAX_STORED_BYTES_PER_KEY) is a 413 too."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import Message, Receive

from sdxl.http.auth import caller_of
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.common import ReplicateError, not_found, origin, whose
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import ReplicateRoute
from sdxl.store.shares import OverShare

METADATA_MAX_BYTES = 1 << 20  # as the form parser holds a text field to
METADATA_MAX_DEPTH = 32  # nested lists and objects in an upload's metadata


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
        limit = settings.max_upload_bytes
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # before 100 Continue: never sent
            raise upload_too_large(limit)
        capped = HttpRequest(http.scope, _capped(http.receive, limit))
        async with capped.form() as form:  # its temporary files removed at the end
            content = form.get("content")
            if content is None or isinstance(content, str):
                raise ReplicateError(
                    422, "Invalid file", "send the file as the multipart part named content"
                )
            metadata = await _metadata(form.get("metadata"))
            await content.seek(0)
            try:
                row = await asyncio.to_thread(
                    store.files.add,
                    (content.filename or "file")[:255],
                    content.content_type or "application/octet-stream",
                    content.file,
                    metadata,
                    caller_of(http),
                    settings.store.tenant_bytes,
                )
            except OverShare as err:
                raise over_share(err) from None
        return JSONResponse(render.file(row, origin(http, settings)), status_code=201)

    @routes.delete(
        "/v1/files/{file_id}", status_code=204, summary="Delete an upload (frees its bytes)"
    )
    def delete_file(file_id: str, http: HttpRequest) -> Response:
        if not store.files.delete(file_id, whose(http)):
            raise not_found(f"the file {file_id[:40]!r}")
        return Response(status_code=204)

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


def upload_too_large(limit: int) -> ReplicateError:
    return ReplicateError(
        413,
        "Upload too large",
        f"the upload is larger than the limit of {limit} bytes (SDXL_MAX_UPLOAD_BYTES); send a "
        "smaller file, or ask the operator to raise the limit",
    )


def over_share(err: OverShare) -> ReplicateError:
    return ReplicateError(
        413,
        "Storage quota exceeded",
        f"this upload ({err.size} bytes or more) would put this API key's stored files, outputs "
        f"and webhook URLs ({err.held} bytes now) over its share of {err.share} bytes "
        "(SDXL_MAX_STORED_BYTES_PER_KEY; by default SDXL_MAX_STORED_BYTES shared equally among "
        "the keys); delete uploads you no longer need (DELETE /v1/files/<id>), wait for older "
        "predictions and files to expire (SDXL_PREDICTION_TTL), or ask the operator to raise it",
    )


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive`, raising the 413 as soon as the body passes `limit` bytes."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise upload_too_large(limit)
        return message

    return counted


async def _metadata(part) -> dict:
    """The `metadata` part: a text field, or a file part (the JavaScript client sends one)."""
    if part is None:
        return {}
    raw = part if isinstance(part, str) else await part.read(METADATA_MAX_BYTES + 1)
    if len(raw) > METADATA_MAX_BYTES:  # a text field is held to this by the form parser
        raise ReplicateError(
            422, "Invalid file", f"metadata must be at most {METADATA_MAX_BYTES} bytes of JSON"
        )
    try:
        metadata = json.loads(raw or "{}")
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        metadata = None
    if not isinstance(metadata, dict) or _deeper(metadata, METADATA_MAX_DEPTH):
        raise ReplicateError(
            422,
            "Invalid file",
            f"metadata must be a JSON object, nested at most {METADATA_MAX_DEPTH} levels deep",
        )
    return metadata


def _deeper(value, most: int) -> bool:
    """Whether `value`'s lists and objects nest more than `most` levels (read without
    recursion: writing it back as JSON would recurse that deep)."""
    level = [value]
    for _ in range(most):
        level = [
            inner
            for outer in level
            for inner in (outer.values() if isinstance(outer, dict) else outer)
            if isinstance(inner, dict | list)
        ]
        if not level:
            return False
    return True
