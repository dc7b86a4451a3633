"""A generation request, checked before any work starts (like diffusers' `check_inputs`).

No torch here: the APIs build and check requests before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdxl.config import (
    ASPECT_RATIOS,
    COG_INPUTS,
    MAX_SEED,
    NAMED_LORAS,
    SIZE_MULTIPLE,
    Caps,
)
from sdxl.errors import InputError, field_error


def _default(name: str):
    return dataclasses.field(default=COG_INPUTS[name].default)


@dataclass(frozen=True)
class Request:
    """Everything one prediction needs; defaults are those of the Cog predictor.

    `image` and `mask` are decoded images (`sdxl.core.images.decode_image`), never paths.
    """

    prompt: str = _default("prompt")
    negative_prompt: str = _default("negative_prompt")
    prompt_2: str | None = _default("prompt_2")
    negative_prompt_2: str | None = _default("negative_prompt_2")
    style_selected: str | None = _default("style_selected")
    image: Image.Image | None = _default("image")
    mask: Image.Image | None = _default("mask")
    width: int = _default("width")
    height: int = _default("height")
    aspect_ratio: str | None = _default("aspect_ratio")
    num_outputs: int = _default("num_outputs")
    scheduler: str = _default("scheduler")
    num_inference_steps: int = _default("num_inference_steps")
    guidance_scale: float = _default("guidance_scale")
    guidance_scale_refiner: float | None = _default("guidance_scale_refiner")
    prompt_strength: float = _default("prompt_strength")
    seed: int | None = _default("seed")
    refine: str = _default("refine")
    high_noise_frac: float = _default("high_noise_frac")
    refine_steps: int | None = _default("refine_steps")
    timestep_spacing: str | None = _default("timestep_spacing")
    apply_watermark: bool = _default("apply_watermark")
    lora_scale: float = _default("lora_scale")
    replicate_weights: str | None = _default("replicate_weights")
    disable_safety_checker: bool = _default("disable_safety_checker")
    output_format: str = _default("output_format")
    output_quality: int = _default("output_quality")
    lora_name: str | None = None  # REST API only: a LoRA shipped with the weights ("offset")
    lora_id: str | None = None  # REST API only: <SDXL_LORA_DIR>/<id>.safetensors

    @property
    def mode(self) -> str:
        if self.image is None:
            return "txt2img"
        return "img2img" if self.mask is None else "inpaint"

    @property
    def adapters(self) -> AdapterSpec:
        return AdapterSpec(
            replicate_weights=self.replicate_weights or None,
            lora_name=self.lora_name,
            lora_id=self.lora_id,
            lora_scale=float(self.lora_scale),
        )

    def with_seed(self) -> Request:
        """This request with a concrete seed: the given one, or a random 32-bit one."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def seeds(self) -> list[int]:
        """One seed per image: `seed + i`, so image i can be made again alone."""
        if self.seed is None:
            raise ValueError("resolve the seed first (Request.with_seed)")
        return [self.seed + i for i in range(self.num_outputs)]

    def describe(self) -> dict[str, Any]:
        """The request's values for logs and metadata: no image data, no weights URL."""
        hidden = ("image", "mask", "replicate_weights")
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden
        }


@dataclass(frozen=True)
class AdapterSpec:
    """The trained weights one request asks for. Empty: nothing is loaded or touched."""

    replicate_weights: str | None = None  # URL of a trainer tar or of a LoRA .safetensors
    lora_name: str | None = None  # a LoRA we ship: "offset"
    lora_id: str | None = None  # <SDXL_LORA_DIR>/<id>.safetensors
    lora_scale: float = 0.6

    @property
    def empty(self) -> bool:
        return not (self.replicate_weights or self.lora_name or self.lora_id)


LORA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_STRINGS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
_STRINGS += ("replicate_weights", "lora_name", "lora_id")
_CHOICES = ("style_selected", "aspect_ratio", "scheduler", "refine", "timestep_spacing")
_CHOICES += ("output_format",)
_INTS = ("width", "height", "num_outputs", "num_inference_steps", "seed", "refine_steps")
_INTS += ("output_quality",)
_FLOATS = ("guidance_scale", "guidance_scale_refiner", "prompt_strength", "high_noise_frac")
_FLOATS += ("lora_scale",)
_BOOLS = ("apply_watermark", "disable_safety_checker")
_IMAGES = ("image", "mask")


def check_inputs(req: Request, caps: Caps = Caps()) -> None:  # noqa: B008 (frozen)
    """Raise InputError for the first problem found, before anything is loaded or run;
    `caps` are the operator's limits (SDXL_MAX_*)."""
    _check_types(req)
    for name, spec in COG_INPUTS.items():
        value = getattr(req, name)
        if value is None or name in _IMAGES:
            continue
        if spec.choices is not None and value not in spec.choices:
            choices = ", ".join(spec.choices)
            raise field_error(
                "{field} is not supported; choose one of: {choices}",
                name,
                value,
                words={"choices": choices},
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise field_error("{field} must be a finite number", name, value)
        if spec.ge is not None and not spec.ge <= value <= spec.le:
            raise field_error(
                "{field} is out of range; use {lo}..{hi}",
                name,
                value,
                words={"lo": f"{spec.ge:g}", "hi": f"{spec.le:g}"},
            )
    _check_caps(req, caps)
    for name in _STRINGS:
        text = getattr(req, name)
        if text is not None and len(text) > caps.max_prompt_chars:
            raise InputError(
                "{field:name} has {n} characters; the limit is {limit} (SDXL_MAX_PROMPT_CHARS)",
                name,
                text[:80],
                words={"n": len(text), "limit": caps.max_prompt_chars},
            )
    if req.mask is not None and req.image is None:
        raise InputError(
            "{mask:name} was given without {image:name}; inpainting needs both (or drop the mask)",
            "mask",
            values={},
        )
    if req.image is None:
        width, height = ASPECT_RATIOS.get(req.aspect_ratio, (req.width, req.height))
        _check_size(width, height, caps)
    if req.refine == "expert_ensemble_refiner" and not 0 < req.high_noise_frac < 1:
        raise field_error(
            "{high_noise_frac} leaves one expert nothing to do; use a value strictly between "
            "0 and 1 with the ensemble of expert denoisers, or no refiner",
            "high_noise_frac",
            req.high_noise_frac,
        )
    check_adapters(req.adapters)


def _check_types(req: Request) -> None:
    for names, kind, label in (
        (_STRINGS, str, "a string"),
        (_INTS, int, "an integer"),
        (_FLOATS, (int, float), "a number"),
        (_BOOLS, bool, "true or false"),
        (_CHOICES, str, "a string"),
        (_IMAGES, Image.Image, "a decoded image"),
    ):
        for name in names:
            value = getattr(req, name)
            wrong_bool = isinstance(value, bool) and kind is not bool
            if value is not None and (wrong_bool or not isinstance(value, kind)):
                raise field_error("{field} must be {kind}", name, value, words={"kind": label})
    if req.prompt is None:
        raise field_error("{prompt:name} must be a string", "prompt", None)


def _check_caps(req: Request, caps: Caps) -> None:
    """The operator's limits, each message naming its variable."""
    for name, cap, variable in (
        ("num_inference_steps", caps.max_steps, "SDXL_MAX_STEPS"),
        ("refine_steps", caps.max_steps, "SDXL_MAX_STEPS"),
        ("num_outputs", caps.max_outputs, "SDXL_MAX_OUTPUTS"),
    ):
        value = getattr(req, name)
        if value is not None and value > cap:
            raise field_error(
                "{field} is over this server's limit of {cap} ({variable}); lower it",
                name,
                value,
                words={"cap": cap, "variable": variable},
            )


def _check_size(width: int, height: int, caps: Caps) -> None:
    for name, value in (("width", width), ("height", height)):
        if value % SIZE_MULTIPLE:
            lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            raise InputError(
                f"{name}={value} is not a multiple of {SIZE_MULTIPLE}; "
                f"use {lower} or {lower + SIZE_MULTIPLE}",
                name,
                value,
            )
    if width * height > caps.max_pixels:
        raise InputError(
            f"width x height = {width}x{height} is {width * height} pixels; the limit is "
            f"{caps.max_pixels} (SDXL_MAX_PIXELS); lower width or height",
            "width",
            width,
        )


def check_adapters(spec: AdapterSpec) -> None:
    """The checks of trained-weight inputs that need no file and no model."""
    if not math.isfinite(spec.lora_scale):
        raise InputError(
            f"lora_scale={spec.lora_scale} must be a finite number", "lora_scale", spec.lora_scale
        )
    if spec.lora_name is not None and spec.lora_name not in NAMED_LORAS:
        raise InputError(
            f"lora_name={spec.lora_name[:80]!r} is not available; choose one of: "
            f"{', '.join(NAMED_LORAS)}",
            "lora_name",
            spec.lora_name,
        )
    if spec.lora_id is not None and (not LORA_ID.fullmatch(spec.lora_id) or ".." in spec.lora_id):
        raise InputError(
            f"lora_id={spec.lora_id[:80]!r} is not a valid id: use letters, digits, '_', "
            "'-' and '.', at most 128 characters, no path separators or '..'",
            "lora_id",
            spec.lora_id,
        )
