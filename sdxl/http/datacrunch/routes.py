"""`POST /v1/images/stable-diffusion-xl/generate`: a synchronous job on the shared engine
(`sdxl.http.sync`: the in-memory queue's bound, a client that hangs up cancels its job)."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Response
from fastapi import Request as HttpRequest

from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.datacrunch.errors import EXAMPLE
from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.datacrunch.schema import ErrorBody, GenerateResponse, ValidationErrorBody
from sdxl.http.errors import InvalidRequest
from sdxl.http.schemas import body_doc
from sdxl.http.shapes import DataCrunchRoute
from sdxl.http.sync import SyncJobs, outcome, until_done
from sdxl.images.outputs import encode_outputs
from sdxl.images.result import Result
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import Checked, InvalidInputs
from sdxl.settings import Caps

GENERATE_PATH = "/v1/images/stable-diffusion-xl/generate"

ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    413: {"model": ErrorBody, "description": "Body over the limit (SDXL_MAX_BODY_BYTES)."},
    422: {"model": ValidationErrorBody, "description": "A parameter is invalid; see detail."},
    429: {"model": ErrorBody, "description": "The queue is full; retry after Retry-After s."},
    503: {"model": ErrorBody, "description": "Model still loading, or shutting down."},
    504: {"model": ErrorBody, "description": "The job ran past SDXL_MAX_SECONDS."},
}


def encoded(result: Result, checked: Checked) -> tuple[list[str], list[str]]:
    """The control maps asked for (return_control_maps) and the images, each encoded (the
    images with their parameters, flagged ones black), base64."""
    fmt, quality = checked.output("output_format"), checked.output("output_quality")
    outputs = encode_outputs(result, fmt, quality, flagged="black")
    maps = [base64.b64encode(o.data).decode("ascii") for o in outputs if o.control_map]
    images = [base64.b64encode(o.data).decode("ascii") for o in outputs if not o.control_map]
    return maps, images


async def checked_body(http: HttpRequest, caps: Caps, loras=None) -> Checked:
    """The body checked, its LoRAs by `loras` (the caller's); a 422 names every problem."""
    body = await json_object(http, EXAMPLE)
    try:
        return await asyncio.to_thread(check_fields, body, DATACRUNCH, caps, loras)
    except InvalidInputs as err:
        raise InvalidRequest(err.problems) from None


def router(sync: SyncJobs) -> APIRouter:
    routes = APIRouter(route_class=DataCrunchRoute)
    caps = sync.service.engine.settings.caps

    @routes.post(
        GENERATE_PATH,
        response_model=GenerateResponse,
        responses=ERRORS,
        summary="Generate images from a prompt (and optionally a seed image)",
        openapi_extra=body_doc("GenerateRequest"),
    )
    async def generate(http: HttpRequest, response: Response) -> GenerateResponse:
        caller = caller_of(http)
        checked = await checked_body(http, caps, sync.service.lora_check(caller))
        (job,) = sync.submit([checked.request()], caller)
        await until_done(http, [job])
        result = outcome(job, DATACRUNCH)
        maps, images = await asyncio.to_thread(encoded, result, checked)
        response.headers["X-Request-Id"] = job.id
        return GenerateResponse(
            images=images,
            seeds=result.seeds,
            nsfw_content_detected=list(result.nsfw),
            output_format=checked.given.get("output_format", "png"),
            control_maps=maps,
        )

    return routes
