"""The request body limit (413), enforced while the body is read, whatever Content-Length says.

Uploads to Replicate's files API (POST /v1/files) are not held here: their route streams them
under a cap of their own (SDXL_MAX_UPLOAD_BYTES, `sdxl.http.replicate.file_routes`)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdxl.http.errors import BodyTooLarge
from sdxl.http.shapes import DATACRUNCH_PREFIX, error_response

UPLOADS = "/v1/files"  # POST: streamed by its route under SDXL_MAX_UPLOAD_BYTES


def _too_large(limit: int, path: str) -> JSONResponse:
    image = "seed_image" if path.startswith(DATACRUNCH_PREFIX) else "image"
    return error_response(
        path,
        BodyTooLarge(
            f"the request body is larger than the limit of {limit} bytes "
            f"(SDXL_MAX_BODY_BYTES); send a smaller {image} (for example as JPEG or WebP, or "
            "scaled down), or raise the limit on the server"
        ),
    )


class BodyLimitMiddleware:
    """Reads the whole body up front, counting; answers 413 as soon as it passes `limit`.

    A declared Content-Length over the limit is refused before reading anything, so clients
    that wait for `100 Continue` (curl with large bodies) never upload it.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload = scope.get("path") == UPLOADS and scope.get("method") == "POST"
        if scope["type"] != "http" or upload:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, scope["path"])(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away while sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(self.limit, scope["path"])(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
