"""Tier 2 of the rules (tier 1, at every API's boundary, is `sdxl.inputs.rules`): the model's
rules, checked when the engine prepares a job, so that breaking one fails the job with a
message naming the input: sides that are multiples of 8, a mask without an image, an ensemble
split that leaves an expert nothing, the names of trained weights."""

from __future__ import annotations

import re

from sdxl.config import NAMED_LORAS, SIZE_MULTIPLE
from sdxl.errors import InputError, field_error
from sdxl.images.inputs import ImageSource
from sdxl.inputs.control_units import check_units
from sdxl.inputs.image_prompt import check_image_prompt
from sdxl.inputs.request import Request
from sdxl.inputs.rules import output_size

LORA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_request(req: Request) -> None:
    """Raise InputError for the first of the model's rules `req` breaks (no model needed)."""
    if req.image is None:
        size = output_size(req.aspect_ratio, req.width, req.height)
        for name, value in zip(("width", "height"), size, strict=True):
            if value % SIZE_MULTIPLE:
                lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
                raise field_error(
                    "{field} is not a multiple of {m}; use {lower} or {upper}",
                    name,
                    value,
                    words={"m": SIZE_MULTIPLE, "lower": lower, "upper": lower + SIZE_MULTIPLE},
                )
    if req.mask is not None and req.image is None:
        raise InputError(
            "{mask:name} was given without {image:name}; inpainting needs both (or drop the mask)",
            "mask",
            values={},
        )
    if req.refine == "expert_ensemble_refiner" and not 0 < req.high_noise_frac < 1:
        raise field_error(
            "{high_noise_frac} leaves one expert nothing to do; use a value strictly between "
            "0 and 1 with the ensemble of expert denoisers, or no refiner",
            "high_noise_frac",
            req.high_noise_frac,
        )
    check_adapter_names(req)
    check_units(
        req.controls,
        mode=req.mode,
        refine=req.refine,
        cache_interval=req.cache_interval,
    )
    check_image_prompt(req.ip_adapter_images, req.cache_interval)


def check_adapter_names(req: Request) -> None:
    """The names of trained weights a request asks for (what their files hold is checked when
    they are read)."""
    if req.lora_name is not None and req.lora_name not in NAMED_LORAS:
        raise field_error(
            "{field} is not available; choose one of: {names}",
            "lora_name",
            req.lora_name,
            words={"names": ", ".join(NAMED_LORAS)},
        )
    if req.lora_id is not None and (not LORA_ID.fullmatch(req.lora_id) or ".." in req.lora_id):
        raise field_error(
            "{field} is not a valid id: use letters, digits, '_', '-' and '.', at most 128 "
            "characters, no path separators or '..'",
            "lora_id",
            req.lora_id,
        )


def image_sources(req: Request) -> list[ImageSource]:
    images = (req.image, req.mask, *(unit.image for unit in req.controls))
    images += req.ip_adapter_images
    return [img for img in images if isinstance(img, ImageSource)]
