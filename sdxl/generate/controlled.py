"""The ControlNet arguments of the base stage: the units' control maps, conditioning scales,
starts and ends as diffusers' ControlNet pipelines take them (a value for one ControlNet, lists
for several; the union model's types as `control_mode`, one map per type)."""

from __future__ import annotations

from typing import Any

from sdxl.generate.plan import Generation


def control_kwargs(gen: Generation, mode: str | None = None) -> dict[str, Any]:
    """The ControlNet arguments of a pipeline of `mode` (the request's own by default; the
    hires fix's second pass is img2img) for `gen`'s units (none: {})."""
    units = gen.request.controls
    if not units:
        return {}
    maps = list(gen.control_maps)
    scales = [unit.conditioning_scale for unit in units]
    starts = [unit.start for unit in units]
    ends = [unit.end for unit in units]
    if units[0].union:  # one model, each unit one of its control modes
        return {
            "control_image": maps,
            "control_mode": [unit.control_mode for unit in units],
            "controlnet_conditioning_scale": scales,
            "control_guidance_start": starts,
            "control_guidance_end": ends,
        }
    # diffusers' txt2img ControlNet pipeline reads the map as `image`; the others as
    # `control_image` (their `image` is the picture being changed)
    key = "image" if (mode or gen.request.mode) == "txt2img" else "control_image"
    if len(units) == 1:
        return {
            key: maps[0],
            "controlnet_conditioning_scale": scales[0],
            "control_guidance_start": starts[0],
            "control_guidance_end": ends[0],
        }
    return {
        key: maps,
        "controlnet_conditioning_scale": scales,
        "control_guidance_start": starts,
        "control_guidance_end": ends,
    }
