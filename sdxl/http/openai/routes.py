"""OpenAI's Images API: `POST /v1/images/generations` (JSON), `POST /v1/images/edits` (a
multipart form), `GET /v1/models[/<id>]`, answered as OpenAI answers them, so that the official
clients and the tools built on them (Open WebUI, LibreChat, LobeChat) can use this server.

Synchronous (`sdxl.http.sync`); `stream: true` answers server-sent events, a preview of the
running job as each partial image (`partial_images` of them) and then the image.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from sdxl.errors import InputError
from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest, NotFound, Unavailable
from sdxl.http.openai.fields import GENERATIONS, WIRES, surface
from sdxl.http.openai.images import (
    encoded,
    job_requests,
    preview_every,
    response_body,
    response_format,
)
from sdxl.http.openai.stream import image_events
from sdxl.http.schemas import body_doc
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import OpenAIRoute
from sdxl.http.sync import SyncJobs, outcome, until_done
from sdxl.http.trained import TrainedModels
from sdxl.http.wire import checked as wire_checked
from sdxl.images.inputs import check_header
from sdxl.images.outputs import OutputImage
from sdxl.inputs.rules import check_cap
from sdxl.inputs.surface import Checked, InvalidInputs, Problem, Surface
from sdxl.store.store import Store

CREATED = 1690329600  # when SDXL 1.0 was released (2023-07-26), as the model's `created`
OWNED_BY = "sdxl-cog"


def router(sync: SyncJobs, settings: Settings, store: Store | None) -> APIRouter:
    routes = APIRouter(route_class=OpenAIRoute)
    caps = sync.service.engine.settings.caps
    names = settings.model_names
    trained = TrainedModels(store)

    def model_json(name: str) -> dict:
        return {"id": name, "object": "model", "created": CREATED, "owned_by": OWNED_BY}

    @routes.get(
        "/v1/models", summary="OpenAI's model list: the served model and the caller's trained ones"
    )
    def list_models(http: HttpRequest) -> dict:
        found = [settings.model_name, *trained.names(http)]
        return {"object": "list", "data": [model_json(name) for name in found]}

    @routes.get("/v1/models/{model_id}", summary="OpenAI's model object")
    def get_model(model_id: str) -> dict:
        if model_id not in names:
            raise NotFound(
                f"The model '{model_id[:100]}' does not exist; this server has {names[0]}"
            )
        return model_json(model_id)

    def weights_of(body: dict, http: HttpRequest) -> str | None:
        """The trained weights `model` names (None: the served model's own)."""
        model = body.get("model")
        if model is None or model in names:
            return None
        tar = trained.weights(model, http)
        if tar is None:
            supported = ", ".join(f"'{name}'" for name in [*names, *trained.names(http)])
            problem = Problem(
                "model", f"Invalid value: '{str(model)[:100]}'. Supported values are: {supported}."
            )
            raise InvalidRequest([problem])
        return tar

    def checked(body: dict, shape: Surface, http: HttpRequest) -> Checked:
        """The body checked (the LoRAs of `loras` and of a1111 tags, for the caller)."""
        loras = sync.service.lora_check(caller_of(http))
        try:
            found = wire_checked(body, shape, WIRES[shape is not GENERATIONS], caps, loras)
            check_cap("n", found.given.get("n", 1), "max_outputs", caps)
        except InvalidInputs as err:
            raise InvalidRequest(err.problems) from None
        except InputError as err:
            raise InvalidRequest([shape.problem(err)]) from None
        if found.given.get("stream") and found.given.get("n", 1) > 1:
            message = "stream=true makes one image: send n=1, or stream=false for several"
            raise InvalidRequest([Problem("n", message)])
        return found

    async def answer(http: HttpRequest, found: Checked, shape: Surface, kind: str, tar=None):
        requests = [replace(request, trained_tar=tar) for request in job_requests(found)]
        streamed = found.given.get("stream")  # events carry b64_json, whatever the format
        if response_format(found) == "url" and not streamed:  # before any GPU work, not after
            if store is None:
                raise Unavailable("url outputs need the prediction store, which is not open")
            await asyncio.to_thread(store.ping)
        if streamed:
            every = preview_every(found)
            return StreamingResponse(
                image_events(sync, http, requests[0], found, shape, kind, every),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        jobs = sync.submit(requests, caller_of(http))
        await until_done(http, jobs)
        results = [outcome(job, shape) for job in jobs]
        outputs = await asyncio.to_thread(encoded, results, found)
        data = await data_of(http, outputs, found)
        body = response_body(found, data, results[0].images[0].size)
        if len(outputs) < sum(len(r.images) for r in results):
            body["flagged_images_omitted"] = sum(len(r.images) for r in results) - len(outputs)
        return JSONResponse(body)

    async def data_of(http: HttpRequest, outputs: list[OutputImage], found: Checked) -> list[dict]:
        if response_format(found) == "b64_json":
            return [{"b64_json": base64.b64encode(o.data).decode("ascii")} for o in outputs]
        if store is None:
            raise Unavailable("url outputs need the prediction store, which is not open")
        images = [(o.name, o.mime, o.data) for o in outputs]
        tokens = await asyncio.to_thread(store.files.add_images, images)
        base = settings.public_url or str(http.base_url).rstrip("/")
        return [
            {"url": f"{base}/outputs/{token}/{o.name}"}
            for token, o in zip(tokens, outputs, strict=True)
        ]

    @routes.post(
        "/v1/images/generations",
        summary="OpenAI's image generation",
        openapi_extra=body_doc("ImageGenerationRequest"),
    )
    async def generations(http: HttpRequest):
        body = await json_object(http, '{"prompt": "a cat", "size": "1024x1024"}')
        tar = await asyncio.to_thread(weights_of, body, http)
        found = await asyncio.to_thread(checked, body, GENERATIONS, http)
        return await answer(http, found, GENERATIONS, "image_generation", tar)

    @routes.post(
        "/v1/images/edits",
        summary="OpenAI's image edit (a multipart form)",
        openapi_extra=body_doc("ImageEditRequest", form=True),
    )
    async def edits(http: HttpRequest):
        body = await edit_form(http)
        tar = await asyncio.to_thread(weights_of, body, http)
        width, height = check_image_size(body["image"])
        shape = surface(edit=True, auto=(width, height))
        found = await asyncio.to_thread(checked, body, shape, http)
        if found.given.get("size", "auto") not in ("auto", f"{width}x{height}"):
            size = found.given["size"]
            message = (
                f"size={size!r}, but an edit has its image's size, {width}x{height}: send "
                f"size={width}x{height} or auto"
            )
            raise InvalidRequest([Problem("size", message)])
        return await answer(http, found, shape, "image_edit", tar)

    return routes


def check_image_size(data: bytes) -> tuple[int, int]:
    try:
        return check_header(data, "image")
    except InputError as err:
        raise InvalidRequest([Problem("image", str(err))]) from None


async def edit_form(http: HttpRequest) -> dict:
    """The form's fields as text, its `image` (one, as `image` or `image[]`) and `mask` bytes."""
    try:
        form = await http.form()
    except Exception as err:  # not multipart, or broken
        message = f"send the edit as multipart/form-data ({type(err).__name__})"
        raise InvalidRequest([Problem(None, message)]) from None
    body: dict = {}
    images = []
    for name, value in form.multi_items():
        if name in ("image", "image[]"):
            images.append(value)
        elif isinstance(value, str):
            body[name] = value
        elif name == "mask":
            body["mask"] = await value.read()
        else:
            raise InvalidRequest([Problem(name, f"{name!r} is a file; only image and mask are")])
    if len(images) != 1 or isinstance(images[0], str):
        message = f"an edit takes one image file; {len(images)} were sent"
        raise InvalidRequest([Problem("image", message)])
    body["image"] = await images[0].read()
    return body
