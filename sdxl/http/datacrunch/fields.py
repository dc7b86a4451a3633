"""The DataCrunch endpoint's request body: its fields, in its names, with its defaults.

Defaults are DataCrunch's, not the Cog predictor's (DDIM instead of K_EULER, guidance 4.0
instead of 7.5, linspace spacing, seed 42): the same prompt gives different images on the two
APIs unless the parameters are aligned. Bounds are the engine's unless DataCrunch documents its
own (`strength`). Values are not coerced: "50" is not an integer and "true" not a boolean.
Whether a request is valid is decided by `sdxl.inputs.rules`; this table is all this API adds.
"""

from __future__ import annotations

from sdxl.config import ASPECT_RATIOS
from sdxl.errors import InputError
from sdxl.http.datacrunch.control import CONTROL_FIELDS, IP_ADAPTER_FIELDS
from sdxl.inputs.surface import Field, Surface

OUTPUT_QUALITY = 90  # webp and jpeg outputs
# DataCrunch's scheduler names -> the engine's (Replicate's) names.
SCHEDULERS = {
    "DDIM": "DDIM",
    "K_EULER": "K_EULER",
    "EulerA": "K_EULER_ANCESTRAL",
    "DPMSolverMultistep": "DPMSolverMultistep",
    "KarrasDPM": "KarrasDPM",
    "PNDM": "PNDM",
    "HeunDiscrete": "HeunDiscrete",
    "LCM": "LCM",  # extensions of this API: the few-step schedulers
    "TCD": "TCD",
}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
SIZE_NOTE = "a multiple of 8. `aspect_ratio` sets it too."


def _not(value: bool) -> bool:
    return not value


def _refiner_share(high_noise_frac: float) -> float:
    return 1 - high_noise_frac


FIELDS = (
    Field("prompt", "prompt", required=True, description="Prompt text."),
    Field("height", "height", default=1024, description=f"Height of the output image, {SIZE_NOTE}"),
    Field("width", "width", default=1024, description=f"Width of the output image, {SIZE_NOTE}"),
    Field(
        "num_inference_steps",
        "num_inference_steps",
        default=50,
        description="Denoising steps of the base model.",
    ),
    Field("guidance_scale", "guidance_scale", default=4.0, description="How closely to follow it."),
    Field(
        "num_images_per_prompt",
        "num_outputs",
        default=1,
        description="Images to generate; image i uses seed + i.",
    ),
    Field(
        "seed",
        "seed",
        default=42,
        nullable=True,
        description="Seed of the random generator; `null` picks a random one (returned).",
    ),
    Field(
        "negative_prompt",
        "negative_prompt",
        nullable=True,
        to_input=lambda text: text or "",
        description="What the image should not show.",
    ),
    Field(
        "seed_image",
        "image",
        nullable=True,
        image_forms=("data", "base64"),
        description="Image to start from, base64-encoded PNG, JPEG or WebP, raw or as a data "
        "URI (`data:image/png;base64,...`). The output has this image's size (scaled down to "
        "at most 4 megapixels, sides floored to multiples of 8); width, height and "
        "aspect_ratio are not used then.",
    ),
    Field(
        "strength",
        "prompt_strength",
        default=0.2,
        ge=0.05,
        le=1.0,
        description="How much noise is added to `seed_image` (used only with seed_image).",
    ),
    Field(
        "scheduler",
        "scheduler",
        default="DDIM",
        choices=SCHEDULERS,
        description="Scheduler (sampler) to use.",
    ),
    Field(
        "timestep_spacing",
        "timestep_spacing",
        default="linspace",
        description="Timestep spacing of the scheduler. Has no effect with KarrasDPM, whose "
        "Karras sigmas set their own spacing.",
    ),
    Field(
        "guidance_scale_refiner",
        "guidance_scale_refiner",
        default=1.0,
        description="Guidance scale of the refiner.",
    ),
    Field(
        "refiner",
        None,
        kind="boolean",
        default=False,
        description="Refine the base model's finished image with the refiner (img2img). "
        "Cannot be combined with is_ensemble.",
    ),
    Field(
        "num_inference_steps_refiner",
        "refine_steps",
        default=50,
        description="Refiner steps actually run when refiner=true.",
    ),
    Field(
        "style_selected",
        "style_selected",
        nullable=True,
        description="Style preset: wraps the prompt in the style's template and puts its "
        "negative prompt before yours.",
    ),
    Field(
        "is_ensemble",
        None,
        kind="boolean",
        default=False,
        description="Ensemble of expert denoisers: the base model runs the first "
        "(1 - refiner_ratio) of the noise schedule, the refiner the rest, following diffusers' "
        "denoising_end/denoising_start (the server logs the actual step counts).",
    ),
    Field(
        "refiner_ratio",
        "high_noise_frac",
        default=0.2,
        ge=0.0,
        le=1.0,
        to_input=_refiner_share,
        from_input=_refiner_share,
        description="Fraction of the schedule the refiner runs when is_ensemble=true "
        "(strictly between 0 and 1 then).",
    ),
    Field(
        "aspect_ratio",
        "aspect_ratio",
        nullable=True,
        description="Sets width and height to SDXL's trained resolution for this ratio; "
        "giving a different width or height as well is an error.",
    ),
    Field(
        "lora_id",
        "lora_id",
        nullable=True,
        description="LoRA to load: <SDXL_LORA_DIR>/<lora_id>.safetensors on the server.",
    ),
    Field(
        "lora_name",
        "lora_name",
        nullable=True,
        description='Public LoRA to load: "offset" (SDXL\'s offset-noise LoRA).',
    ),
    Field(
        "safety_filter",
        "disable_safety_checker",
        kind="boolean",
        default=True,
        to_input=_not,
        from_input=_not,
        description="Check the images for NSFW content (flagged images come back black).",
    ),
    Field(
        "output_format",
        "output_format",
        default="png",
        choices=OUTPUT_FORMATS,
        description="Encoding of the returned images (an extension of this API).",
    ),
    Field(
        "cache_interval",
        "cache_interval",
        default=1,
        description="DeepCache: the UNet's deep features are computed every this many steps "
        "and reused between (1: off; 3 is about 2x faster). An extension of this API.",
    ),
    Field(
        "prompt_syntax",
        "prompt_syntax",
        default="plain",
        description="How prompts are read: plain text, or AUTOMATIC1111's language ((word:1.3), "
        "(word), [word], BREAK). An extension of this API.",
    ),
    Field(
        "loras",
        "loras",
        nullable=True,
        description="LoRAs applied together, each at its weight: comma-separated name[:weight] "
        "or https URL of a .safetensors[:weight]. An extension of this API.",
    ),
    Field(
        "hires_scale",
        "hires_scale",
        nullable=True,
        description="Hires fix: a second img2img pass at this many times the size (1-4; null: "
        "none). An extension of this API.",
    ),
    Field(
        "hires_upscaler",
        "hires_upscaler",
        description="The hires fix's upscaler: Latent* (in latent space), None, Lanczos, "
        "Nearest or an ESRGAN model. An extension of this API.",
    ),
    Field(
        "hires_steps",
        "hires_steps",
        description="The second pass's steps (0: num_inference_steps). An extension of this API.",
    ),
    Field(
        "hires_strength",
        "hires_strength",
        description="The second pass's denoising strength. An extension of this API.",
    ),
    *CONTROL_FIELDS,
    *IP_ADAPTER_FIELDS,
)


def _assemble(values: dict, given: set) -> dict:
    """The engine's `refine` from two booleans; an aspect ratio that contradicts a size."""
    if values["is_ensemble"] and values["refiner"]:
        raise InputError(
            "is_ensemble=true and refiner=true cannot be combined; set is_ensemble=true for "
            "the ensemble of expert denoisers, or refiner=true to refine the base image",
            "is_ensemble",
        )
    ratio = values.get("aspect_ratio")
    if ratio is not None:
        wanted = dict(zip(("width", "height"), ASPECT_RATIOS[ratio], strict=True))
        for name, size in wanted.items():
            if name in given and values[name] != size:
                raise InputError(
                    f"aspect_ratio={ratio!r} sets width={wanted['width']} and "
                    f"height={wanted['height']}, but {name}={values[name]} was also given; send "
                    "either aspect_ratio or width and height",
                    name,
                )
    refine = "no_refiner"
    if values["is_ensemble"]:
        refine = "expert_ensemble_refiner"
    elif values["refiner"]:
        refine = "base_image_refiner"
    return {"refine": refine}


DATACRUNCH = Surface(
    fields=FIELDS,
    null_is_unset=False,
    fixed={"output_quality": OUTPUT_QUALITY},
    assemble=_assemble,
)
