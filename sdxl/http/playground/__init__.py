"""The browser playground at `GET /`: one static page (HTML, CSS and JavaScript in `static/`, no
CDN, no build step) that builds its form from the predictor's schema and runs predictions
through this server's Replicate API with the visitor's own API key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sdxl.http.caps import inline_input_schema
from sdxl.http.replicate.models import Catalogue

STATIC = Path(__file__).resolve().parent / "static"
# The inputs shown unfolded; every other input of the schema is under "Advanced inputs", so
# an input added to the predictor appears there without a change to the page.
BASIC_INPUTS = ("prompt", "negative_prompt", "image", "mask", "width", "height", "num_outputs")
# The page talks to this origin only; outputs may be URLs under SDXL_PUBLIC_URL or data: URIs.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def router(catalogue: Catalogue, auth_required: bool) -> APIRouter:
    routes = APIRouter()

    @routes.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}
        return FileResponse(STATIC / "index.html", headers=headers)

    @routes.get("/playground/config", summary="What the playground's form is built from")
    async def config() -> JSONResponse:
        return JSONResponse(playground_config(catalogue, auth_required))

    return routes


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


def playground_config(catalogue: Catalogue, auth_required: bool) -> dict:
    """The model and version the page runs, whether it needs a key, and the inputs in the
    predictor's order with their enums written out."""
    model, versions = next(iter(catalogue.models.items()))
    schema = catalogue.schema
    order = schema["components"]["schemas"]["Input"]["properties"]
    properties = inline_input_schema(schema)["properties"]
    names = sorted(properties, key=lambda name: order[name].get("x-order", 0))
    return {
        "model": model,
        "version": versions[0],
        "auth": auth_required,
        "basic": list(BASIC_INPUTS),
        "inputs": [{"name": name, **properties[name]} for name in names],
    }
