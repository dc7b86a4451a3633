"""AUTOMATIC1111's upscalers: the lists its clients read (`/upscalers`, `/latent-upscale-modes`),
the check of txt2img's `hr_upscaler` against them, and the Extras tab's single-image upscale
(`POST /extra-single-image`), which runs on the engine's device between two steps of its jobs.

The upscalers are A1111's names (`sdxl.config`): the Latent ones (the hires fix only), None,
Lanczos and Nearest, and the ESRGAN-family models in the weights' upscalers/ folder (the
engine's `models.upscalers`, known once the model is loaded). Extras' "None" leaves the image as
it is, as A1111's Extras does; the face restorers and a second, blended upscaler are refused.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from PIL import Image

from sdxl.config import LATENT_UPSCALERS, MAX_SIDE, PIXEL_UPSCALERS
from sdxl.errors import InputError, field_error
from sdxl.http.a1111.fields import WIRE
from sdxl.http.a1111.info import quote
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.shapes import A1111Route
from sdxl.http.sync import SyncJobs, check_accepting
from sdxl.images.inputs import load
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_choice, check_fields
from sdxl.inputs.surface import Field, InvalidInputs, Problem, Surface
from sdxl.settings import Caps

EXAMPLE = '{"image": "<base64 PNG>", "upscaling_resize": 2, "upscaler_1": "Lanczos"}'
NONE = "None"
# A1111's Extras body (its defaults); fields it has that change nothing here are read, not used.
EXTRAS = Surface(
    fields=(
        Field("image", "image", required=True, image_forms=("data", "base64")),
        Field("resize_mode", None, kind="integer", default=0, ge=0, le=1),
        Field("upscaling_resize", None, kind="number", default=2.0, ge=1, le=8),
        Field("upscaling_resize_w", None, kind="integer", default=512, ge=1, le=MAX_SIDE),
        Field("upscaling_resize_h", None, kind="integer", default=512, ge=1, le=MAX_SIDE),
        Field("upscaling_crop", None, kind="boolean", default=True),
        Field("upscaler_1", None, kind="string", default=NONE),
        Field("upscaler_2", None, kind="string", default=NONE),
        Field("extras_upscaler_2_visibility", None, kind="number", default=0.0, ge=0, le=1),
        Field("gfpgan_visibility", None, kind="number", default=0.0, ge=0, le=1),
        Field("codeformer_visibility", None, kind="number", default=0.0, ge=0, le=1),
        *(Field(name, None, kind="any") for name in ("codeformer_weight", "upscale_first")),
        Field("show_extras_results", None, kind="any"),
    ),
    ignore_unknown=True,  # as A1111 ignores what it does not know
)


def installed(engine) -> list[str] | None:
    """The ESRGAN-family models the engine has (None: the model is not loaded yet)."""
    if engine.models is None:
        return None
    upscalers = getattr(engine.models, "upscalers", None)  # models made without a library
    return [] if upscalers is None else list(upscalers.names())


def upscaler_rows(engine) -> list[dict]:
    """A1111's /upscalers: the pixel upscalers, then the models (a virtual path, never the
    server's). `scale` is 4 for each, as A1111 lists its ESRGAN files: knowing a model's own
    would load it, which only the engine does, under its lock."""
    rows = [_row(name, None, None) for name in PIXEL_UPSCALERS]
    for name in installed(engine) or []:
        rows.append(_row(name, "ESRGAN", f"models/ESRGAN/{name}.safetensors"))
    return rows


def _row(name: str, model: str | None, path: str | None) -> dict:
    return {"name": name, "model_name": model, "model_path": path, "model_url": None, "scale": 4}


def check_hr_upscaler(request: Request, engine) -> None:
    """txt2img's hr_upscaler among those this server has (a 422 listing them); with no second
    pass, not read (A1111 ignores it then). Before the model is loaded the engine checks."""
    names = installed(engine)
    if not request.hires or names is None:
        return
    try:
        offered = [*LATENT_UPSCALERS, *PIXEL_UPSCALERS, *names]
        check_choice("hr_upscaler", request.hires_upscaler, offered)
    except InputError as err:
        raise InvalidRequest([Problem("hr_upscaler", str(err))]) from None


@dataclass(frozen=True)
class Upscale:
    """One Extras upscale: the image, its new size, the upscaler and A1111's infotext."""

    image: Image.Image
    width: int
    height: int
    upscaler: str
    info: str


def extras_request(body: dict, caps: Caps, names: list[str]) -> Upscale:
    """A1111's Extras body checked and its image decoded; InvalidRequest names the field."""
    try:
        found = check_fields(WIRE.typed(body, EXTRAS), EXTRAS, Caps())  # no engine input
        given = found.given
        value = {f.name: given.get(f.name, f.default) for f in EXTRAS.fields}
        _refuse_unsupported(value)
        check_choice("upscaler_1", value["upscaler_1"], [*PIXEL_UPSCALERS, *names])
        image = load(found.values["image"])
        return _planned(image, value, caps)
    except InvalidInputs as err:
        raise InvalidRequest(err.problems) from None
    except InputError as err:
        raise InvalidRequest([Problem(err.field, str(err))]) from None


def _refuse_unsupported(value: dict) -> None:
    for name, why in (
        ("gfpgan_visibility", "there is no face restoration model"),
        ("codeformer_visibility", "there is no face restoration model"),
        ("extras_upscaler_2_visibility", "a second upscaler is not blended in; use upscaler_1"),
    ):
        if value[name]:
            raise field_error(f"{{field}} is not available here: {why}; send 0", name, value[name])


def _planned(image: Image.Image, value: dict, caps: Caps) -> Upscale:
    upscaler = value["upscaler_1"]
    if upscaler == NONE:  # A1111's Extras: no upscale, the sizes not read
        return Upscale(image, image.width, image.height, NONE, "")
    if value["resize_mode"] == 0:
        by = value["upscaling_resize"]
        size = (int(image.width * by), int(image.height * by))
        info = {"Postprocess upscale by": by}
        fields = ("upscaling_resize", "upscaling_resize")
    else:
        size = (value["upscaling_resize_w"], value["upscaling_resize_h"])
        info = {"Postprocess upscale to": f"{size[0]}x{size[1]}"}
        if value["upscaling_crop"]:
            info["Postprocess crop to"] = f"{size[0]}x{size[1]}"
        else:  # the whole image, its aspect kept: the size that covers the one asked for
            by = max(size[0] / image.width, size[1] / image.height)
            size = (round(image.width * by), round(image.height * by))
        fields = ("upscaling_resize_w", "upscaling_resize_h")
    _check_size(size, fields, caps)
    info["Postprocess upscaler"] = upscaler
    text = ", ".join(f"{key}: {quote(_number(v))}" for key, v in info.items())
    return Upscale(image, *size, upscaler, text)


def _number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check_size(size: tuple[int, int], fields: tuple[str, str], caps: Caps) -> None:
    for side, name in zip(size, fields, strict=True):
        if not 1 <= side <= MAX_SIDE:
            raise field_error(
                "{field} makes a side of {side} pixels; the sides must be 1..{most}",
                name,
                side,
                words={"side": side, "most": MAX_SIDE},
            )
    pixels = size[0] * size[1]
    if pixels > caps.max_pixels:
        raise field_error(
            "{field} makes {size}, {pixels} pixels; the limit is {limit} (SDXL_MAX_PIXELS)",
            fields[0],
            size[0],
            words={"size": f"{size[0]}x{size[1]}", "pixels": pixels, "limit": caps.max_pixels},
        )


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def router(sync: SyncJobs) -> APIRouter:
    routes = APIRouter(route_class=A1111Route)
    engine = sync.service.engine

    @routes.get("/upscalers", summary="None, Lanczos, Nearest and the ESRGAN models installed")
    async def upscalers() -> list[dict]:
        return await asyncio.to_thread(upscaler_rows, engine)

    @routes.get("/latent-upscale-modes", summary="The hires fix's upscalers in latent space")
    def latent_upscale_modes() -> list[dict]:
        return [{"name": name} for name in LATENT_UPSCALERS]

    @routes.post(
        "/extra-single-image",
        summary="A1111's Extras: one image upscaled by upscaler_1 (None, Lanczos, Nearest or "
        "an ESRGAN model)",
    )
    async def extra_single_image(http: HttpRequest) -> dict:
        body = await json_object(http, EXAMPLE)
        check_accepting(sync.service)  # the models are loaded and sound
        caps = engine.settings.caps
        names = await asyncio.to_thread(installed, engine)
        wanted = await asyncio.to_thread(extras_request, body, caps, names or [])
        image = wanted.image
        if wanted.upscaler != NONE:
            size = (wanted.width, wanted.height)
            try:
                image = await asyncio.to_thread(engine.upscale_image, image, *size, wanted.upscaler)
            except InputError as err:  # the model went from the folder meanwhile
                raise InvalidRequest([Problem("upscaler_1", str(err))]) from None
        html = f"<p>{wanted.info}</p>" if wanted.info else ""
        return {"html_info": html, "image": await asyncio.to_thread(png_base64, image)}

    return routes
