"""The ControlNet extension's own routes (Mikubill/sd-webui-controlnet, scripts/api.py), as it
answers them: its API version, the control models this server has (`name [hash]`, as the
extension lists model files), the preprocessors it runs with their sliders, the control types,
the unit count, and `/controlnet/detect` (a preprocessor alone, on the engine's thread pool).
Auth and errors as the other AUTOMATIC1111 routes.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter
from fastapi import Request as HttpRequest

from sdxl.config import MAX_CONTROL_UNITS
from sdxl.errors import InputError
from sdxl.http.a1111.controlnet import Models
from sdxl.http.a1111.controlnet_tables import (
    IP_BY_NAME,
    IP_MODULES,
    IP_REFUSED,
    PRIORITY,
    RESOLUTION,
    Module,
    offered_modules,
)
from sdxl.http.a1111.upscalers import png_base64
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.shapes import A1111Route
from sdxl.http.sync import SyncJobs, check_accepting
from sdxl.images.inputs import load, source_from_text
from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.surface import Problem

API_VERSION = 3  # internal_controlnet/external_code.py get_api_version()
EXAMPLE = '{"controlnet_module": "canny", "controlnet_input_images": ["<base64 PNG>"]}'
TAGS = {"canny": "Canny", "depth": "Depth", "ip_adapter": "IP-Adapter"}  # the modules' tags
# The models each tag lists (global_state.select_control_type: the tag, its aliases in
# Preprocessor.tag_to_filters, "union" for the union model's types).
FILTERS = {
    "canny": ("canny", "union"),
    "depth": ("depth", "union"),
    "ip_adapter": ("ip-adapter", "ip_adapter", "ipadapter"),
}
NONE_MODEL = "None"


def models_of(engine):
    """A callable that reads the engine's control models now (Models), for the txt2img and
    img2img surfaces; no models where the engine has no control library."""
    library = getattr(engine, "control_library", None)

    def read() -> Models:
        ip = ip_adapters(engine)
        if library is None:
            return Models({}, has_depth=False, ip_adapters=ip)
        found = library.models()
        union = {name: model.union for name, model in found.items()}
        return Models(union, library.has_depth(), ip)

    return read


def ip_adapters(engine) -> tuple[str, ...]:
    """The IP-Adapters the engine can run (short names): none without the image encoder."""
    library = getattr(engine, "ip_library", None)
    if library is None or not library.has_encoder():
        return ()
    return tuple(library.adapters())


def ip_listed(engine) -> list[str]:
    """The IP-Adapters as the extension lists model files: `<file stem> [hash]` (here the
    first 8 hex digits of the SHA-256 of the safetensors header)."""
    library = getattr(engine, "ip_library", None)
    names = []
    for short in ip_adapters(engine):
        path = library.file(short)
        names.append(f"{path.stem} [{_header_digest(path)}]")
    return names


def _header_digest(path: Path) -> str:
    with path.open("rb") as file:
        size = int.from_bytes(file.read(8), "little")
        return hashlib.sha256(file.read(min(size, 100_000_000))).hexdigest()[:8]


def listed_name(name: str, folder: Path) -> str:
    """A model as the extension lists it: `name [hash]` (here the first 8 hex digits of the
    SHA-256 of its config.json; the name alone is accepted too)."""
    try:
        digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:8]
    except OSError:
        return name
    return f"{name} [{digest}]"


def sorted_modules(has_depth: bool, has_ip: bool = False) -> list[Module]:
    """The extension's order (Preprocessor.get_sorted_preprocessors): none first, then by
    sorting priority and label, descending (ip-adapter-auto 1000; canny, depth_midas and
    ip-adapter_clip_h 100; the others 0). IP-Adapter's modules where it has adapters."""
    offered = offered_modules(has_depth) + (list(IP_MODULES) if has_ip else [])
    rest = [m for m in offered if m.name != "none"]
    rest.sort(key=lambda m: str(PRIORITY.get(m.name, 0)).zfill(8) + m.label, reverse=True)
    return [m for m in offered if m.name == "none"] + rest


def control_types(modules: list[Module], models: list[str]) -> dict:
    """/controlnet/control_types (global_state.select_control_type) over what is here."""
    out = {
        "All": {
            "module_list": [m.label for m in modules],
            "model_list": [NONE_MODEL, *models],
            "default_option": "none",
            "default_model": NONE_MODEL,
        }
    }
    for maker, tag in TAGS.items():
        tagged = [m for m in modules if m.maker in (maker, "none")]
        if len(tagged) == 1:
            continue
        fitting = [m for m in models if any(p in m.lower() for p in FILTERS[maker])]
        filtered = [NONE_MODEL, *fitting]
        out[tag] = {
            "module_list": [m.label for m in tagged],
            "model_list": filtered,
            "default_option": tagged[1].label,
            "default_model": filtered[1] if len(filtered) > 1 else NONE_MODEL,
        }
    return {"control_types": dict(sorted(out.items(), key=lambda kv: kv[0] != "All"))}


def router(sync: SyncJobs) -> APIRouter:
    routes = APIRouter(prefix="/controlnet", route_class=A1111Route)
    engine = sync.service.engine
    library = getattr(engine, "control_library", None)

    def listed() -> tuple[list[str], bool, bool]:
        """The models listed (ControlNets, then IP-Adapters), whether depth and IP run."""
        ip = ip_listed(engine)
        if library is None:
            return ip, False, bool(ip)
        found = library.models()
        names = [listed_name(name, model.folder) for name, model in found.items()]
        return names + ip, library.has_depth(), bool(ip)

    @routes.get("/version", summary="The ControlNet extension's API version")
    def version() -> dict:
        return {"version": API_VERSION}

    @routes.get("/model_list", summary="The ControlNet models this server has")
    async def model_list(update: bool = True) -> dict:
        names, *_ = await asyncio.to_thread(listed)
        return {"model_list": names}

    @routes.get("/module_list", summary="The preprocessors this server runs")
    async def module_list(alias_names: bool = False) -> dict:
        _, depth, ip = await asyncio.to_thread(listed)
        modules = sorted_modules(depth, ip)
        names = [m.label if alias_names else m.name for m in modules]
        detail = {
            name: {"model_free": False, "sliders": [dict(s) for s in m.sliders]}
            for name, m in zip(names, modules, strict=True)
        }
        return {"module_list": names, "module_detail": detail}

    @routes.get("/control_types", summary="The control types, their modules and models")
    async def types() -> dict:
        names, depth, ip = await asyncio.to_thread(listed)
        return control_types(sorted_modules(depth, ip), names)

    @routes.get("/settings", summary="How many ControlNet units a request may enable")
    def settings() -> dict:
        return {"control_net_unit_count": MAX_CONTROL_UNITS}

    @routes.post("/detect", summary="A preprocessor alone: the control maps of images")
    async def detect(http: HttpRequest) -> dict:
        body = await json_object(http, EXAMPLE)
        check_accepting(sync.service)
        modules = sorted_modules(library is not None and library.has_depth())
        try:
            module, images, unit = await asyncio.to_thread(detect_request, body, modules)
            found = [await asyncio.to_thread(_detect, engine, module, i, unit) for i in images]
        except InputError as err:
            raise InvalidRequest([Problem(err.field, str(err))]) from None
        encoded = [await asyncio.to_thread(png_base64, image) for image in found]
        return {"info": "Success", "images": encoded}

    return routes


def detect_request(body: dict, modules: list[Module]) -> tuple[Module, list, ControlUnit]:
    """/controlnet/detect's body (scripts/api.py detect): the module, the input images
    decoded, and a unit carrying the thresholds and resolution; InputError names the field."""
    known = {
        "controlnet_module", "controlnet_input_images", "controlnet_processor_res",
        "controlnet_threshold_a", "controlnet_threshold_b", "controlnet_masks", "low_vram",
    }  # fmt: skip
    unknown = sorted(set(body) - known)
    if unknown:
        raise InputError(f"{unknown[0]} is not a field of /controlnet/detect", unknown[0])
    name = body.get("controlnet_module", "none")
    if name in IP_BY_NAME or name in IP_REFUSED:
        raise InputError(
            f"controlnet_module={name!r} is not available at /controlnet/detect: an IP-Adapter "
            "module makes no image (the extension answers ip-adapter-auto with 'Module not "
            "supported' and the others with a torch tensor, which this server does not send)",
            "controlnet_module",
        )
    module = next((m for m in modules if name in (m.name, m.label)), None)
    if module is None:
        offered = ", ".join(m.name for m in modules)
        raise InputError(
            f"controlnet_module={name!r} is not available here; use one of {offered}",
            "controlnet_module",
        )
    if body.get("controlnet_masks"):
        raise InputError(
            "controlnet_masks is not available here: these preprocessors take no mask",
            "controlnet_masks",
        )
    texts = body.get("controlnet_input_images", [])
    if not isinstance(texts, list) or not texts:
        raise InputError("controlnet_input_images: no image selected", "controlnet_input_images")
    images = []
    for index, text in enumerate(texts):
        field = f"controlnet_input_images[{index}]"
        if not isinstance(text, str):
            raise InputError(f"{field} must be a base64 image", field)
        images.append(load(source_from_text(text, field, ("data", "base64"))))
    unit = ControlUnit(
        type="canny" if module.maker != "depth" else "depth",
        image=None,
        preprocessor=module.maker,
        low_threshold=_slider(body, "controlnet_threshold_a", module, 1),
        high_threshold=_slider(body, "controlnet_threshold_b", module, 2),
        resize_mode="resize",
        processor_res=int(_slider(body, "controlnet_processor_res", module, 0)),
        names=(("preprocessor", "controlnet_module"), ("low_threshold", "controlnet_threshold_a")),
    )
    return module, images, unit


def _slider(body: dict, field: str, module: Module, index: int) -> int:
    """A slider's value: -1 (the extension's default) is the module's default; others must
    lie within its range."""
    value = body.get(field, -1)
    if index >= len(module.sliders):
        return -1  # a slider this module has not: not read, as the extension does not
    slider = module.sliders[index]
    if value == -1:
        return int(slider["value"])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{field}={value!r} must be a number", field)
    if not slider["min"] <= value <= slider["max"]:
        raise InputError(
            f"{field}={value:g} is out of range: use {slider['min']}..{slider['max']} "
            f"({slider['name']}), or -1 for {slider['value']}",
            field,
        )
    return int(value)


def _detect(engine, module: Module, image, unit: ControlUnit):
    """The map at the size the extension returns: the image scaled to the resolution on its
    short side (the input itself for none, which the extension returns unchanged)."""
    if module.maker == "none":
        return image.convert("RGB")
    resolution = unit.processor_res or RESOLUTION["value"]
    scale = resolution / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    sized = replace(unit, image=image, processor_res=None)
    return engine.detect_control(sized, *size)
