"""IP-Adapter's inputs: the reference images one adapter follows and how strongly, read from
the APIs' fields into the engine's values once, at the boundary (`with_image_prompt`).

The Replicate inputs name one image (`ip_adapter_image`); AUTOMATIC1111's ControlNet units may
give several for one adapter. The scale is one number for every block, or diffusers'
per-block scales (`set_ip_adapter_scale`'s dict: {"down": {"block_2": [0.0, 1.0]}, "mid": 0.5,
"up": {"block_0": [0.0, 1.0, 0.0]}}), written as JSON in `ip_adapter_block_scales`. Whether
each named block exists is checked against the UNet when the job is prepared.

No torch here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sdxl.errors import InputError

BLOCK_SCALES = "ip_adapter_block_scales"
PARTS = ("down", "mid", "up")


def with_image_prompt(values: Mapping[str, Any]) -> dict[str, Any]:
    """Engine values with `ip_adapter_image` as the tuple `ip_adapter_images` and the block
    scales' JSON read into a dict; InputError names the input at fault."""
    out = dict(values)
    image = out.pop("ip_adapter_image", None)
    if "ip_adapter_images" not in out:
        out["ip_adapter_images"] = () if image is None else (image,)
    scales = out.get(BLOCK_SCALES)
    if isinstance(scales, str):
        out[BLOCK_SCALES] = parse_block_scales(scales)
    return out


def parse_block_scales(text: str, field: str = BLOCK_SCALES) -> dict:
    """The JSON of per-block scales, checked for its shape: an object of down / mid / up, down
    and up objects of block_<n> to a scale or a list of scales (one per attention of the
    block), mid a scale; every scale a number from 0 to 1."""
    try:
        scales = json.loads(text)
    except ValueError as err:
        raise InputError(f"{field} is not valid JSON ({err}); {_EXAMPLE}", field) from None
    check_block_scales(scales, field)
    return scales


_EXAMPLE = 'write it as {"up": {"block_0": [0.0, 1.0, 0.0]}} (diffusers\' per-block scales)'


def check_block_scales(scales: Any, field: str) -> None:
    if not isinstance(scales, dict) or not scales:
        raise InputError(f"{field} must be a non-empty JSON object; {_EXAMPLE}", field)
    for part, value in scales.items():
        if part not in PARTS:
            raise InputError(
                f"{field}: {str(part)[:40]!r} is not a part of the UNet; use down, mid or up",
                field,
            )
        if part == "mid":
            _check_scale(value, f"{field}.mid", field)
            continue
        if not isinstance(value, dict):
            raise InputError(f"{field}.{part} must be an object of block_<n>; {_EXAMPLE}", field)
        for block, scale in value.items():
            name = str(block)
            if not (name.startswith("block_") and name[6:].isdigit()):
                raise InputError(
                    f"{field}.{part}: {name[:40]!r} is not a block; use block_0, block_1, ...",
                    field,
                )
            for one in scale if isinstance(scale, list) else [scale]:
                _check_scale(one, f"{field}.{part}.{name}", field)


def _check_scale(value: Any, where: str, field: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 <= value <= 1:
        raise InputError(f"{where}={str(value)[:40]} must be a number from 0 to 1", field)


def check_image_prompt(images: tuple, cache_interval: int) -> None:
    """What IP-Adapter cannot run with here."""
    if images and cache_interval > 1:
        raise InputError(
            "{cache_interval} with an IP-Adapter image: DeepCache's cached features would "
            "skip its attention on the reference image; set cache_interval to 1, or drop "
            "ip_adapter_image",
            "cache_interval",
            cache_interval,
            values={"cache_interval": cache_interval},
        )
