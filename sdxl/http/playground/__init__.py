"""The browser playground at `GET /`: one static page (HTML, CSS and JavaScript in `static/`, no
CDN, no build step) that builds its forms from the predictor's and the trainer's schemas, and
runs predictions and trainings through this server's Replicate API with the visitor's own key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sdxl.http.caps import inline_input_schema
from sdxl.http.replicate.catalogue import Catalogue
from sdxl.inputs.control_units import flat_inputs

STATIC = Path(__file__).resolve().parent / "static"
# The inputs shown unfolded; every other input of the schema is under "Advanced inputs", so
# an input added to the predictor appears there without a change to the page.
BASIC_INPUTS = ("prompt", "negative_prompt", "image", "mask", "width", "height", "num_outputs")
# The ControlNet section's: the first unit (controlnet_2 and _3 stay under "Advanced inputs"),
# Canny's thresholds and whether the maps come back (the page shows them apart from the images).
CONTROL_INPUTS = (
    *flat_inputs(1).values(),
    "return_control_maps",
)
# The Train page's: the archive has its own drop zone (uploaded to /v1/files), and a checkpoint
# to resume from is for scripts; every other trainer input is in the form, these unfolded.
BASIC_TRAINING_INPUTS = ("max_train_steps",)
TRAINING_FILES = ("input_images", "resume_from_checkpoint")
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
    model, versions = next(iter(catalogue.served.items()))
    schema = catalogue.schema
    order = schema["components"]["schemas"]["Input"]["properties"]
    properties = inline_input_schema(schema)["properties"]
    names = sorted(properties, key=lambda name: order[name].get("x-order", 0))
    return {
        "model": model,
        "version": versions[0],
        "auth": auth_required,
        "basic": list(BASIC_INPUTS),
        "control": [name for name in CONTROL_INPUTS if name in properties],
        "inputs": [{"name": name, **properties[name]} for name in names],
        "training": training_config(schema),
    }


def training_config(schema: dict) -> dict | None:
    """The trainer's inputs as the page's form takes them (None: this model has no trainer)."""
    components = schema["components"]["schemas"]
    if "TrainingInput" not in components:
        return None
    order = components["TrainingInput"]["properties"]
    # inline_input_schema writes out the enums of the component named Input: give it this one.
    renamed = {"components": {"schemas": {**components, "Input": components["TrainingInput"]}}}
    properties = inline_input_schema(renamed)["properties"]
    names = sorted(properties, key=lambda name: order[name].get("x-order", 0))
    return {
        "basic": list(BASIC_TRAINING_INPUTS),
        "images": properties["input_images"].get("description", ""),
        "inputs": [
            {"name": name, **properties[name]} for name in names if name not in TRAINING_FILES
        ],
    }
