"""`stream: true`: server-sent events as OpenAI sends them, which the official clients iterate:
`<kind>.partial_image` (a preview of the running job, up to `partial_images` of them), then
`<kind>.completed`, or an error event; a client that hangs up cancels the job."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request as HttpRequest
from PIL import Image

from sdxl.http.auth import caller_of
from sdxl.http.errors import ApiError
from sdxl.http.openai.images import REPORTED_QUALITY, encoded
from sdxl.http.shapes import openai_error
from sdxl.http.sync import SyncJobs, outcome
from sdxl.images.outputs import encode_image
from sdxl.inputs.request import Request
from sdxl.inputs.surface import Checked, Surface
from sdxl.runtime.memory_jobs import Watch

USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def image_events(
    sync: SyncJobs,
    http: HttpRequest,
    request: Request,
    found: Checked,
    shape: Surface,
    kind: str,
    every: int,
) -> AsyncIterator[bytes]:
    watch = Watch()
    (job,) = sync.submit([request], caller_of(http), preview_every=every, watch=watch)
    fmt, quality = found.output("output_format"), found.output("output_quality")
    common = {
        "background": "opaque",
        "output_format": found.given.get("output_format", "png"),
        "quality": REPORTED_QUALITY.get(found.given.get("quality", "auto"), "medium"),
    }
    partial = found.given.get("partial_images", 0)
    sent = 0
    try:
        while (item := await watch.next()) is not None:
            preview = item[1]
            if sent < partial:
                image = Image.open(io.BytesIO(preview.jpeg))
                data = await asyncio.to_thread(encode_image, image, fmt, quality)
                yield sse(
                    f"{kind}.partial_image",
                    {
                        "type": f"{kind}.partial_image",
                        "b64_json": base64.b64encode(data).decode("ascii"),
                        "created_at": int(time.time()),
                        "size": f"{preview.width}x{preview.height}",
                        "partial_image_index": sent,
                        **common,
                    },
                )
                sent += 1
                if sent >= partial:
                    job.want_previews(0)  # all it asked for: no preview is made any more
        try:
            result = outcome(job, shape)
            (output,) = await asyncio.to_thread(encoded, [result], found)
        except ApiError as err:
            body = openai_error(err.status, err.message, None, getattr(err, "code", None))
            yield sse("error", {"type": "error", **body})
            return
        width, height = result.images[0].size
        yield sse(
            f"{kind}.completed",
            {
                "type": f"{kind}.completed",
                "b64_json": base64.b64encode(output.data).decode("ascii"),
                "created_at": int(time.time()),
                "size": f"{width}x{height}",
                "usage": USAGE,
                **common,
            },
        )
    finally:
        if not job.done():
            job.cancel("the client went away")
