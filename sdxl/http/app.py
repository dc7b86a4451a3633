"""The ASGI app: middlewares, probes, error answers, the OpenAPI document, the APIs' routes."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from sdxl.http import playground
from sdxl.http.a1111 import controlnet_routes
from sdxl.http.a1111 import fields as a1111_fields
from sdxl.http.a1111 import routes as a1111
from sdxl.http.auth import ApiKeys, AuthMiddleware
from sdxl.http.body_limits import BodyLimitMiddleware
from sdxl.http.datacrunch import routes as datacrunch
from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.errors import ApiError, store_unavailable
from sdxl.http.metrics import Metrics
from sdxl.http.openai import fields as openai_fields
from sdxl.http.openai import routes as openai
from sdxl.http.replicate import routes as replicate
from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.schemas import body_schema
from sdxl.http.server_settings import Settings
from sdxl.http.service import ServerStatus, Service
from sdxl.http.shapes import A1111_PREFIXES, error_response, invalid_body, shape_of
from sdxl.http.sync import SyncJobs
from sdxl.http.trained import TrainedModels
from sdxl.store.errors import StoreUnavailable

# The request bodies whose schemas the routes refer to: (title, surface, a multipart form)
BODIES = (
    ("GenerateRequest", DATACRUNCH, False),
    ("ImageGenerationRequest", openai_fields.GENERATIONS, False),
    ("ImageEditRequest", openai_fields.surface(edit=True), True),
    ("Txt2ImgRequest", a1111_fields.TXT2IMG, False),
    ("Img2ImgRequest", a1111_fields.IMG2IMG, False),
)

DESCRIPTION = """\
Stable Diffusion XL 1.0 behind four APIs: Replicate's prediction API (`/v1/predictions`, for
the official Replicate clients), the DataCrunch inference endpoint (the same JSON body, the
same defaults), OpenAI's Images API (`/v1/images/generations`, `/v1/images/edits`) and
AUTOMATIC1111's (`/sdapi/v1/...`). Authenticate with `Authorization: Bearer <your_api_key>`
(or HTTP Basic with the key as the password).

The defaults are DataCrunch's (DDIM, guidance_scale 4.0, linspace spacing, seed 42), not
the Cog predictor's, so the same prompt gives different images on the two APIs unless the
parameters are aligned. One generation runs at a time; others wait in arrival order in a
bounded queue (429 with Retry-After when it is full). `/health` always answers at once.
"""


def create_app(
    service: Service, settings: Settings, keys: ApiKeys | None, api: ReplicateApi | None
) -> FastAPI:
    """The app around `service`; `keys=None` serves without authentication (--no-auth);
    `api` serves Replicate's API beside the DataCrunch endpoint."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start_loading()
        if api is not None:
            api.runtime.start()
        yield
        await asyncio.to_thread(service.wait_idle)
        if api is not None:
            await asyncio.to_thread(api.runtime.close)  # results, checkpoints, webhooks

    app = FastAPI(
        title="SDXL REST API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if keys is not None:
        app.add_middleware(AuthMiddleware, keys=keys)  # outermost: no body is read before it

    # Each API's routes answer their errors in its shape (`sdxl.http.shapes`); these answer
    # what no such route did, in the shape of the path's API.
    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError) -> JSONResponse:
        return invalid_body(shape_of(request.url.path, request.method), exc)

    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc, request.method)

    @app.exception_handler(StoreUnavailable)
    async def on_store_unavailable(request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(request.url.path, store_unavailable(exc), request.method)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException) -> JSONResponse:
        """Not found, method not allowed: as FastAPI answers, in the path's API's shape."""
        error = ApiError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status = exc.status_code
        error.retry = False
        return error_response(request.url.path, error, request.method)

    @app.get(
        "/health", summary="Liveness: answers at once; 503 only when the server is out of order"
    )
    async def health() -> JSONResponse:
        report = {**service.health(), "queue_size": settings.queue_size}
        failed = report["status"] == ServerStatus.FAILED
        return JSONResponse(report, status_code=503 if failed else 200)

    @app.get("/ready", summary="Readiness: 200 once the model is loaded and sound, else 503")
    async def ready() -> JSONResponse:
        report = {**service.health(), "queue_size": settings.queue_size}
        ready = report["status"] == ServerStatus.READY
        return JSONResponse(report, status_code=200 if ready else 503)

    metrics = Metrics(service, None if api is None else api.store)

    @app.get("/metrics", summary="Prometheus metrics of this replica (no key needed)")
    async def prometheus_metrics() -> Response:
        text = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    sync = SyncJobs(service, settings.queue_size, settings.queue_size_per_key)
    app.include_router(datacrunch.router(sync))
    app.include_router(openai.router(sync, settings, None if api is None else api.store))
    app.include_router(
        a1111.router(sync, settings, TrainedModels(None if api is None else api.store))
    )
    app.include_router(controlnet_routes.router(sync))  # the ControlNet extension's routes
    if api is not None:
        app.include_router(replicate.router(api, service, settings))
        app.include_router(playground.router(api.catalogue, keys is not None))
        app.mount("/playground/static", playground.static_files(), name="playground")

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            caps = service.engine.settings.caps
            for title, surface, form in BODIES:
                components[title] = body_schema(surface, caps, title, form)
            if keys is not None:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["bearerAuth"] = {"type": "http", "scheme": "bearer"}
                for path, operations in schema["paths"].items():
                    if path.startswith(("/v1/", *A1111_PREFIXES)):
                        for operation in operations.values():
                            operation["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
