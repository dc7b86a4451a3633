"""The ASGI app: routes, error answers and the OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from sdxl.errors import InputError  # ImageInputError included
from sdxl.request import Request, check_inputs
from sdxl.rest import safety
from sdxl.rest.auth import ApiKeys, AuthMiddleware
from sdxl.rest.encode import encode_images
from sdxl.rest.engine import FAILED, LOADING, READY, Engine
from sdxl.rest.errors import (
    ApiError,
    ClientDisconnected,
    GenerationFailed,
    QueueFull,
    Unavailable,
    engine_input_error,
    format_validation_errors,
    retry_after,
)
from sdxl.rest.limits import BodyLimitMiddleware
from sdxl.rest.params import to_engine_request
from sdxl.rest.schema import (
    ErrorBody,
    GenerateRequest,
    GenerateResponse,
    ValidationErrorBody,
)
from sdxl.rest.seed_image import decode_seed_image, seed_image_file
from sdxl.rest.settings import DRAINING_RETRY_AFTER_S, LOADING_RETRY_AFTER_S, Settings
from sdxl.rest.worker import QueueFullError

log = logging.getLogger(__name__)

GENERATE_PATH = "/v1/images/stable-diffusion-xl/generate"

DESCRIPTION = """\
Stable Diffusion XL 1.0 behind the DataCrunch inference API: the same JSON body, the same
defaults. Authenticate with `Authorization: Bearer <your_api_key>`.

The defaults are DataCrunch's (DDIM, guidance_scale 4.0, linspace spacing, seed 42), not
the Cog predictor's, so the same prompt gives different images on the two APIs unless the
parameters are aligned. One generation runs at a time; others wait in arrival order in a
bounded queue (429 with Retry-After when it is full). `/health` always answers at once.
"""

_ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    413: {"model": ErrorBody, "description": "Body over the limit (SDXL_MAX_BODY_BYTES)."},
    422: {"model": ValidationErrorBody, "description": "A parameter is invalid; see detail."},
    429: {"model": ErrorBody, "description": "The queue is full; retry after Retry-After s."},
    503: {"model": ErrorBody, "description": "Model still loading, or shutting down."},
}


def _check_accepting(engine: Engine) -> None:
    status = engine.status
    if status == READY:
        return
    if status == LOADING:
        raise Unavailable(
            "the model is still loading; retry in a few seconds (GET /health says when it "
            "is ready)",
            headers=retry_after(LOADING_RETRY_AFTER_S),
        )
    if status == FAILED:
        raise Unavailable(f"the model failed to load ({engine.load_error}); see the server log")
    raise Unavailable(
        "the server is shutting down and takes no new requests; send the request again",
        headers={**retry_after(DRAINING_RETRY_AFTER_S), "Connection": "close"},
    )


def _check(request: Request) -> None:
    try:
        check_inputs(request)
    except InputError as err:
        raise engine_input_error(str(err)) from err


async def _run(engine: Engine, request: Request):
    _check_accepting(engine)
    job_id = engine.next_id()
    try:
        return job_id, await engine.generate(job_id, request)
    except QueueFullError as err:
        raise QueueFull(
            f"{err.waiting} requests are already waiting, the most this server queues "
            "(SDXL_QUEUE_SIZE); retry after the Retry-After seconds",
            headers=retry_after(err.retry_after),
        ) from err
    except InputError as err:
        raise engine_input_error(str(err)) from err  # load_image already hides temp paths
    except Exception as err:
        log.exception("job %d failed", job_id)
        raise GenerationFailed(
            f"generation failed ({type(err).__name__}, request {job_id}); the server is still "
            "running: retry, or change the parameters"
        ) from err


async def _until_disconnected(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(http: HttpRequest, work):
    """Await `work`, cancelling it if the client hangs up first, so that a request nobody
    waits for leaves the queue (one already running still finishes; its result is dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(http))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    log.info("a client disconnected before its images were ready; its request was dropped")
    raise ClientDisconnected("the client disconnected before its images were ready")


def create_app(engine: Engine, settings: Settings, keys: ApiKeys | None) -> FastAPI:
    """The app around `engine`; `keys=None` serves without authentication (--no-auth)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start_loading()
        yield
        await asyncio.to_thread(engine.queue.shutdown)

    app = FastAPI(
        title="SDXL REST API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if keys is not None:
        app.add_middleware(AuthMiddleware, keys=keys)  # outermost: no body is read before it

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": format_validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health", summary="Liveness: answers at once, with the queue's state")
    async def health() -> JSONResponse:
        report = engine.health()
        return JSONResponse(report, status_code=503 if report["status"] == FAILED else 200)

    @app.get("/ready", summary="Readiness: 200 once the model is loaded, 503 otherwise")
    async def ready() -> JSONResponse:
        report = engine.health()
        return JSONResponse(report, status_code=200 if report["status"] == READY else 503)

    @app.post(
        GENERATE_PATH,
        response_model=GenerateResponse,
        responses=_ERRORS,
        summary="Generate images from a prompt (and optionally a seed image)",
    )
    async def generate(
        body: GenerateRequest, http: HttpRequest, response: Response
    ) -> GenerateResponse:
        request = to_engine_request(body)
        raw = None
        if body.seed_image is not None:
            raw = await asyncio.to_thread(decode_seed_image, body.seed_image)
        with seed_image_file(raw) as path:
            request = dataclasses.replace(request, image=path)
            _check(request)
            job_id, result = await _unless_disconnected(http, _run(engine, request))
        images, flags = safety.check_images(result)
        encoded = await asyncio.to_thread(encode_images, images, body.output_format)
        response.headers["X-Request-Id"] = str(job_id)
        return GenerateResponse(
            images=encoded,
            seeds=result.seeds,
            nsfw_content_detected=flags,
            output_format=body.output_format,
        )

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            if keys is not None:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["bearerAuth"] = {"type": "http", "scheme": "bearer"}
                schema["paths"][GENERATE_PATH]["post"]["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
