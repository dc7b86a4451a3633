"""AUTOMATIC1111's ControlNet extension (Mikubill/sd-webui-controlnet) at the txt2img and
img2img boundary: `alwayson_scripts.controlnet.args`, a list of ControlNetUnit dicts, read into
the engine's `ControlUnit`s, in the extension's names, values and defaults
(internal_controlnet/args.py's ControlNetUnit; scripts/enums.py's ResizeMode and ControlMode).

Each field is honoured, accepted where it cannot change the image (`HARMLESS`, at any value;
`AT_DEFAULT`, at the extension's default only), or refused with a 422 that names the unit's
field (`alwayson_scripts.controlnet.args[0].control_mode`). The model decides the unit's type:
a dedicated folder (canny, depth) its own, the union model the type of `union_control_type` or
of the module. The modules offered are those this server runs (`MODULES`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdxl.config import DEDICATED_CONTROLS
from sdxl.errors import InputError
from sdxl.http.a1111.controlnet_tables import (
    AT_DEFAULT,
    BY_NAME,
    CANNY_LOW,
    CONTROL_MODES,
    HONOURED,
    KNOWN,
    LEGACY,
    RESIZE_MODES,
    RESOLUTION,
    UNION_TYPES,
    Module,
    is_ip_unit,
    offered_modules,
)
from sdxl.images.inputs import source_from_text
from sdxl.inputs.control_units import ControlUnit

SCRIPT = "controlnet"  # the extension's script title (A1111 matches it case-insensitively)
ARGS = f"alwayson_scripts.{SCRIPT}.args"
FORMS = ("data", "base64")  # the extension decodes base64, with or without a data: prefix


HASH_SUFFIX = re.compile(r" \[[0-9A-Fa-f]+\]$")
# A unit's attributes -> its ControlNetUnit field, for the engine's messages.
NAMES = {
    "type": "model",
    "image": "image",
    "preprocessor": "module",
    "conditioning_scale": "weight",
    "start": "guidance_start",
    "end": "guidance_end",
    "low_threshold": "threshold_a",
    "high_threshold": "threshold_b",
    "resize_mode": "resize_mode",
    "processor_res": "processor_res",
    "model": "model",
}


def model_name(listed: str) -> str:
    """A model as /controlnet/model_list lists it ("canny [1a2b3c4d]") -> its folder name."""
    return HASH_SUFFIX.sub("", listed)


@dataclass(frozen=True)
class Models:
    """The control models a server has, by folder name -> whether it is the union model."""

    union: Mapping[str, bool]
    has_depth: bool = True
    ip_adapters: tuple[str, ...] = ()  # the IP-Adapters here, by short name (IP_ADAPTER_MODELS)


def read_units(scripts: Any, models: Models, init_image: str | None) -> tuple[list, list[bool]]:
    """`alwayson_scripts`' ControlNet units (the enabled ones) and whether each unit's map is
    returned (save_detected_map); InputError naming the field at fault. Scripts other than
    ControlNet are refused by name. An img2img unit without an image uses the init image."""
    if not isinstance(scripts, Mapping):
        raise InputError("alwayson_scripts must be an object of scripts", "alwayson_scripts")
    others = [str(name) for name in scripts if str(name).lower() != SCRIPT]
    if others:
        raise InputError(
            f"alwayson_scripts={', '.join(others)!r} is not available here: this server runs "
            "only the ControlNet extension's script (controlnet)",
            "alwayson_scripts",
        )
    script = next(iter(scripts.values()), None) if scripts else None
    if script is None:
        return [], []
    args = script.get("args") if isinstance(script, Mapping) else None
    if not isinstance(args, list):
        raise InputError(
            f"{ARGS} must be a list of ControlNet units (objects, as the extension's "
            "ControlNetUnit); other forms are not read here",
            ARGS,
        )
    units, keep = [], []
    for index, arg in enumerate(args):
        where = f"{ARGS}[{index}]"
        if not isinstance(arg, Mapping):
            raise InputError(f"{where} is not a ControlNet unit object: send a dict", where)
        if is_ip_unit(arg):
            continue  # read by sdxl.http.a1111.ip_units
        unit = _unit(aliased(arg, where), where, models, init_image)
        if unit is not None:
            units.append(unit)
            keep.append(bool(arg.get("save_detected_map", True)))
    return units, keep


def aliased(arg: Mapping, where: str) -> dict:
    values = dict(arg)
    for old, new in LEGACY.items():
        if old in values:
            if new in values:
                raise InputError(f"{where}: send {new} or {old} (its old name), not both", where)
            values[new] = values.pop(old)
    unknown = sorted(set(values) - KNOWN)
    if unknown:
        raise InputError(
            f"{where}.{unknown[0]} is not a field this server reads: it knows "
            f"{', '.join(HONOURED)} (and the extension's UI and batch fields)",
            f"{where}.{unknown[0]}",
        )
    for name, default in AT_DEFAULT.items():
        if values.get(name, default) != default:
            raise InputError(
                f"{where}.{name} is not available here: leave it out (the extension's {default!r})",
                f"{where}.{name}",
            )
    return values


def _unit(values: dict, where: str, models: Models, init_image: str | None):
    if not boolean(values, "enabled", False, where):
        return None
    module = _module(values.get("module", "none"), where, models)
    kind, model = _kind(values, module, where, models)
    res = _processor_res(values, module, where)
    low = _threshold(values, "threshold_a", 100, where) if module.maker == "canny" else 100
    high = _threshold(values, "threshold_b", 200, where) if module.maker == "canny" else 200
    check_control_mode(values.get("control_mode", "Balanced"), where)
    image = values.get("image")
    if image is None and init_image is not None:
        image = init_image  # the extension's img2img fallback (choose_input_image)
    names = tuple((attr, f"{where}.{field}") for attr, field in NAMES.items())
    return ControlUnit(
        type=kind,
        image=None if image is None else unit_image(image, f"{where}.image"),
        preprocessor=module.maker,
        conditioning_scale=number(values, "weight", 1.0, where, 0.0, 2.0),
        start=number(values, "guidance_start", 0.0, where, 0.0, 1.0),
        end=number(values, "guidance_end", 1.0, where, 0.0, 1.0),
        low_threshold=low,
        high_threshold=high,
        resize_mode=resize_mode_of(values.get("resize_mode", "Crop and Resize"), where),
        processor_res=res,
        model=model,
        names=names,
    )


def _module(value: Any, where: str, models: Models) -> Module:
    offered = [m.name for m in offered_modules(models.has_depth)]
    found = BY_NAME.get(value) if isinstance(value, str) else None
    if found is None or found.name not in offered:
        raise InputError(
            f"{where}.module={value!r} is not a preprocessor this server runs; use one of "
            f"{', '.join(offered)}",
            f"{where}.module",
        )
    return found


def _kind(values: dict, module: Module, where: str, models: Models) -> tuple[str, str]:
    """The unit's type and model folder: the model decides it (see the module docstring)."""
    field = f"{where}.model"
    raw = values.get("model", "None")
    name = model_name(raw) if isinstance(raw, str) else raw
    have = ", ".join(models.union) or "none"
    if not isinstance(name, str) or name.lower() == "none" or name not in models.union:
        raise InputError(
            f"{field}={raw!r}: this server has no such ControlNet; it has: {have} (GET "
            "/controlnet/model_list)",
            field,
        )
    if models.union[name]:
        return _union_kind(values, module, where, name), name
    kind = next((k for k in DEDICATED_CONTROLS if name.lower().startswith(k)), None)
    kind = kind or (module.maker if module.maker != "none" else None)
    if kind is None:
        raise InputError(
            f"{field}={name}: its control type is not told by its name; choose the module "
            f"that makes its maps ({', '.join(DEDICATED_CONTROLS)})",
            f"{where}.module",
        )
    return kind, name


def _union_kind(values: dict, module: Module, where: str, name: str) -> str:
    field = f"{where}.union_control_type"
    chosen = values.get("union_control_type", "Unknown")
    if chosen not in (*UNION_TYPES, "Unknown"):
        raise InputError(
            f"{field}={chosen!r} is not one the union model runs here; use one of "
            f"{', '.join(UNION_TYPES)}",
            field,
        )
    if chosen != "Unknown":
        return UNION_TYPES[chosen]
    if module.maker == "none":
        raise InputError(
            f"{where}.model={name} is the union model: say which of its control types the "
            f"image is with {field} ({', '.join(UNION_TYPES)}) or a module (canny, depth)",
            field,
        )
    return f"union_{module.maker}"


def _processor_res(values: dict, module: Module, where: str) -> int | None:
    """None: the output's size (pixel_perfect); else the extension's default 512 for -1."""
    if boolean(values, "pixel_perfect", False, where):
        return None
    value = values.get("processor_res", -1)
    if value == -1 or module.maker == "none":
        return RESOLUTION["value"]
    return int(number(values, "processor_res", -1, where, RESOLUTION["min"], RESOLUTION["max"]))


def _threshold(values: dict, name: str, default: int, where: str) -> int:
    value = values.get(name, -1)
    if value == -1:
        return default  # the extension's sentinel: the module's default
    return int(number(values, name, -1, where, CANNY_LOW["min"], CANNY_LOW["max"]))


def check_control_mode(value: Any, where: str) -> None:
    if value in ("Balanced", 0):
        return
    known = value in CONTROL_MODES or value in (1, 2)
    why = "it is not implemented here (diffusers' pipelines run Balanced)" if known else (
        f"use one of {', '.join(CONTROL_MODES)}"
    )  # fmt: skip
    raise InputError(
        f"{where}.control_mode={value!r} is not available: {why}; send Balanced",
        f"{where}.control_mode",
    )


def resize_mode_of(value: Any, where: str) -> str:
    found = RESIZE_MODES.get(value) if isinstance(value, str | int) else None
    if found is None or isinstance(value, bool):
        raise InputError(
            f"{where}.resize_mode={value!r}: use Just Resize, Crop and Resize or Resize and "
            "Fill (or 0, 1, 2)",
            f"{where}.resize_mode",
        )
    return found


def unit_image(value: Any, field: str, mask: str = "inpaint or effective region"):
    """A unit's image: base64 or a data URI, or the extension's {"image", "mask"} form without
    a mask (`mask` says what the extension would use it for)."""
    if isinstance(value, Mapping):
        if value.get("mask") is not None:
            raise InputError(
                f"{field}.mask is not available here: a unit's mask ({mask}) is not run; send "
                "the image alone",
                f"{field}.mask",
            )
        value = value.get("image")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{field} must be a base64 image (PNG, JPEG or WebP)", field)
    return source_from_text(value, field, FORMS)


def number(values: dict, name: str, default: float, where: str, low: float, high: float):
    value = values.get(name, default)
    field = f"{where}.{name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{field}={value!r} must be a number from {low:g} to {high:g}", field)
    if not low <= value <= high:
        raise InputError(f"{field}={value:g} is out of range: use {low:g}..{high:g}", field)
    return float(value)


def boolean(values: dict, name: str, default: bool, where: str) -> bool:
    value = values.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"{where}.{name}={value!r} must be true or false", f"{where}.{name}")
    return value


def saved_maps(scripts: Any) -> list[bool]:
    """For each enabled unit of a body `read_units` accepted: whether its map is returned."""
    script = next(iter(scripts.values()), None) if isinstance(scripts, Mapping) else None
    args = script.get("args", []) if isinstance(script, Mapping) else []
    enabled = [a for a in args if a.get("enabled") is True and not is_ip_unit(a)]
    return [bool(a.get("save_detected_map", True)) for a in enabled]
