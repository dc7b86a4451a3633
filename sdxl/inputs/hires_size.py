"""The hires fix's target size, the one rule for it: `hires_width` / `hires_height` when given
(one given: the other keeps the first pass's aspect), else each side times `hires_scale`; each
side rounded down to a multiple of 8, then held to the sides' and the pixels' limits like any
request's size. Checked at an API's boundary where the first pass's size is known (text to
image, `sdxl.inputs.rules`) and when the job is planned (`sdxl.generate.plan`)."""

from __future__ import annotations

from sdxl.config import MAX_SIDE, MIN_SIDE
from sdxl.errors import InputError, field_error


def hires_size(
    width: int,
    height: int,
    scale: float | None,
    hires_width: int | None,
    hires_height: int | None,
    max_pixels: int,
) -> tuple[int, int]:
    """The second pass's (width, height) after a first pass at width x height; InputError
    names the input that set it (hires_width, hires_height or hires_scale)."""
    if hires_width is not None or hires_height is not None:
        target_w = hires_width if hires_width is not None else round(hires_height * width / height)
        target_h = hires_height if hires_height is not None else round(hires_width * height / width)
        field = "hires_width" if hires_width is not None else "hires_height"
    else:
        target_w, target_h = round(width * scale), round(height * scale)
        field = "hires_scale"
    target_w, target_h = target_w // 8 * 8, target_h // 8 * 8
    value = {"hires_width": hires_width, "hires_height": hires_height, "hires_scale": scale}
    for side in (target_w, target_h):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise field_error(
                "{field} makes the hires fix's size {size}, a side outside {lo}..{hi}; "
                "change {field:name}",
                field,
                value[field],
                words={"size": f"{target_w}x{target_h}", "lo": MIN_SIDE, "hi": MAX_SIDE},
            )
    if target_w * target_h > max_pixels:
        raise InputError(
            "{field} makes the hires fix's size {size}, {pixels} pixels; the limit is {limit} "
            "(SDXL_MAX_PIXELS); lower {field:name}",
            field,
            value[field],
            values={field: value[field]},
            words={
                "size": f"{target_w}x{target_h}",
                "pixels": target_w * target_h,
                "limit": max_pixels,
            },
        )
    return target_w, target_h
