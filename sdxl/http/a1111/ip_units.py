"""The ControlNet extension's IP-Adapter units (Mikubill/sd-webui-controlnet) at the txt2img and
img2img boundary: the enabled units of `alwayson_scripts.controlnet.args` whose module is one of
the extension's IP-Adapter modules or whose model is an IP-Adapter, read into the request's
`ip_adapter_images`, `ip_adapter_model` and `ip_adapter_scale`.

As the extension: `model` names the adapter by its file's stem (`ip-adapter-plus_sdxl_vit-h`,
with or without ` [hash]`), `module` is ip-adapter_clip_h (ip-adapter_clip_sd15),
ip-adapter_clip_sdxl_plus_vith or ip-adapter-auto (all the ViT-H encoder here), `weight` is
the adapter's scale, `image` the reference image (a base64 string, {"image": ...}, or a list of
them: the extension's several inputs of one IP unit), the init image when an img2img unit has
none. An IP unit counts toward the extension's three units.

Here one adapter runs per request: several units of one adapter are its several reference
images (their weights equal), units of two adapters a 422. Fields an IP unit cannot honour
here (a weight over 1, a guidance range other than 0..1, a control mode other than Balanced, a
mask, the ViT-bigG module) are 422s naming the unit's field; the preprocessor's resolution,
thresholds and resize mode do not change an IP unit's image (the CLIP encoder sizes its input).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdxl.config import MAX_CONTROL_UNITS
from sdxl.errors import InputError
from sdxl.http.a1111.controlnet import (
    ARGS,
    Models,
    aliased,
    boolean,
    check_control_mode,
    number,
    resize_mode_of,
    unit_image,
)
from sdxl.http.a1111.controlnet_tables import (
    IP_BY_NAME,
    IP_MODULES,
    IP_REFUSED,
    ip_model_names,
    is_ip_unit,
)
from sdxl.images.inputs import load

CLIP_MASK = "the extension's CLIP mask"  # what an IP unit's mask is for there (not run here)


def read_ip_units(scripts: Any, models: Models, init_image: str | None) -> dict[str, Any]:
    """The engine values of the enabled IP units (none: {}); InputError naming the unit's
    field. Call after `read_units`, which has checked the script and its args' shape."""
    args = _args(scripts)
    enabled = [i for i, a in enumerate(args) if isinstance(a, Mapping) and a.get("enabled") is True]
    if len(enabled) > MAX_CONTROL_UNITS:  # IP units count, as the extension counts them
        raise InputError(
            f"{len(enabled)} ControlNet units are enabled; at most {MAX_CONTROL_UNITS} can run "
            "at once (IP-Adapter units among them): disable the others",
            f"{ARGS}[{enabled[MAX_CONTROL_UNITS]}].enabled",
        )
    found = []
    for index, arg in enumerate(args):
        if isinstance(arg, Mapping) and is_ip_unit(arg):
            where = f"{ARGS}[{index}]"
            unit = _ip_unit(aliased(arg, where), where, models, init_image)
            if unit is not None:
                found.append((where, *unit))
    return _one_adapter(found)


def _args(scripts: Any) -> list:
    script = next(iter(scripts.values()), None) if isinstance(scripts, Mapping) else None
    args = script.get("args") if isinstance(script, Mapping) else None
    return args if isinstance(args, list) else []


def _ip_unit(values: dict, where: str, models: Models, init_image: str | None):
    """(adapter, scale, images) of one unit, or None when it is disabled."""
    if not boolean(values, "enabled", False, where):
        return None
    _module(values.get("module", "none"), f"{where}.module", values.get("model"))
    adapter = _adapter(values.get("model", "None"), f"{where}.model", models)
    for name, default in (("guidance_start", 0.0), ("guidance_end", 1.0)):
        if number(values, name, default, where, 0.0, 1.0) != default:
            raise InputError(
                f"{where}.{name}={values[name]:g} is not available for an IP-Adapter unit: "
                f"the adapter runs over every step here; send {default:g}",
                f"{where}.{name}",
            )
    check_control_mode(values.get("control_mode", "Balanced"), where)
    resize_mode_of(values.get("resize_mode", "Crop and Resize"), where)  # checked, not used
    boolean(values, "pixel_perfect", False, where)
    boolean(values, "save_detected_map", True, where)
    scale = number(values, "weight", 1.0, where, 0.0, 2.0)
    if scale > 1:
        raise InputError(
            f"{where}.weight={scale:g} is out of range for an IP-Adapter unit: its scale is "
            "0..1 here (diffusers' set_ip_adapter_scale)",
            f"{where}.weight",
        )
    image = values.get("image")
    if image is None:
        image = init_image  # the extension's img2img fallback (choose_input_image)
    return adapter, scale, _images(image, f"{where}.image")


def _adapter(raw: Any, field: str, models: Models) -> str:
    names = ip_model_names()
    name = raw.split("[")[0].strip() if isinstance(raw, str) else raw  # presets.match_model
    have = [stem for stem, short in names.items() if short in models.ip_adapters]
    if not isinstance(name, str) or names.get(name) not in models.ip_adapters:
        raise InputError(
            f"{field}={raw!r}: this server has no such IP-Adapter; it has: "
            f"{', '.join(have) or 'none'} (GET /controlnet/model_list)",
            field,
        )
    return names[name]


def _module(value: Any, field: str, model: Any) -> None:
    offered = ", ".join(m.name for m in IP_MODULES)
    if isinstance(value, str) and value in IP_REFUSED:
        raise InputError(
            f"{field}={value!r} is not available here: {IP_REFUSED[value]}; the ViT-H "
            f"adapters take {offered}",
            field,
        )
    if not isinstance(value, str) or value not in IP_BY_NAME:
        raise InputError(
            f"{field}={value!r}: the unit's model {model!r} is an IP-Adapter, which takes an "
            f"IP-Adapter module; use one of {offered}",
            field,
        )


def _images(value: Any, field: str) -> list:
    """The unit's reference images, in the forms ControlNetUnit.get_input_images_rgba reads."""
    if value is None:
        raise InputError(f"{field}: an IP-Adapter unit needs a reference image", field)
    if isinstance(value, list | tuple) and value and not isinstance(value[0], Mapping):
        if len(value) != 2:
            raise InputError(f"{field} must be an image, [image, mask] or a list of images", field)
        value = [{"image": value[0], "mask": value[1]}]  # the extension's [image, mask]
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise InputError(f"{field} is an empty list: send a reference image", field)
    names = [f"{field}[{i}]" if len(items) > 1 else field for i in range(len(items))]
    return [unit_image(item, name, CLIP_MASK) for item, name in zip(items, names, strict=True)]


def _one_adapter(found: list[tuple]) -> dict[str, Any]:
    """One adapter per request: the units' images for it, their (equal) weight its scale."""
    if not found:
        return {}
    first, adapter, scale, _ = found[0]
    for where, other, weight, _ in found[1:]:
        if other != adapter:
            raise InputError(
                f"{where}.model names another IP-Adapter than {first}.model: one IP-Adapter "
                "runs per request here; send the reference images of one adapter",
                f"{where}.model",
            )
        if weight != scale:
            raise InputError(
                f"{where}.weight={weight:g} differs from {first}.weight={scale:g}: units of one "
                "IP-Adapter are its reference images at one scale here; give them one weight",
                f"{where}.weight",
            )
    images = tuple(image for *_, unit_images in found for image in unit_images)
    return {"ip_adapter_images": images, "ip_adapter_model": adapter, "ip_adapter_scale": scale}


def detected_maps(scripts: Any, control_maps: list, init_image: str | None) -> list:
    """The maps the extension appends after the images, in its units' order: a ControlNet
    unit's map (the next of `control_maps`), an IP unit's reference images as given (its
    preprocessor returns no image: the extension shows the input, controlnet.py get_control);
    each unit's only when its save_detected_map is true. Images as PIL images."""
    maps, pending = [], iter(control_maps)
    for index, arg in enumerate(_args(scripts)):
        if not isinstance(arg, Mapping) or arg.get("enabled") is not True:
            continue
        kept = arg.get("save_detected_map", True) is True
        if not is_ip_unit(arg):
            found = next(pending, None)
            maps += [found] if kept and found is not None else []
        elif kept:
            image = arg.get("image", arg.get("input_image"))
            field = f"{ARGS}[{index}].image"
            sources = _images(init_image if image is None else image, field)
            maps += [load(source).convert("RGB") for source in sources]
    return maps
