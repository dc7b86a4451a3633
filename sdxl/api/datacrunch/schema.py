"""The JSON bodies of `POST /v1/images/stable-diffusion-xl/generate`, as DataCrunch documents them.

Defaults are DataCrunch's, not the Cog predictor's (DDIM instead of K_EULER, guidance 4.0
instead of 7.5, linspace spacing, seed 42): the same prompt gives different images on the two
APIs unless the parameters are aligned. Bounds come from the engine's one input table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdxl.api.datacrunch.tables import OUTPUT_FORMATS, SCHEDULER_ALIASES
from sdxl.config import ASPECT_RATIOS, COG_INPUTS, MAX_PROMPT_CHARS, STYLES, TIMESTEP_SPACINGS

SchedulerName = Literal[tuple(SCHEDULER_ALIASES)]
AspectRatio = Literal[tuple(ASPECT_RATIOS)]
StyleName = Literal[tuple(STYLES)]
TimestepSpacing = Literal[TIMESTEP_SPACINGS]
OutputFormat = Literal[OUTPUT_FORMATS]

STRENGTH_RANGE = (0.05, 1.0)


def _bounds(cog_name: str) -> dict:
    spec = COG_INPUTS[cog_name]
    return {"ge": spec.ge, "le": spec.le}


class GenerateRequest(BaseModel):
    """Every parameter of the DataCrunch SDXL endpoint, plus `output_format`.

    Unknown fields are rejected (a typo must not silently fall back to a default), and
    values are not coerced: `"50"` is not an integer and `"true"` is not a boolean.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="Prompt text.")
    height: int = Field(
        1024,
        **_bounds("height"),
        description="Height of the output image, a multiple of 8. `aspect_ratio` sets it too.",
    )
    width: int = Field(
        1024,
        **_bounds("width"),
        description="Width of the output image, a multiple of 8. `aspect_ratio` sets it too.",
    )
    num_inference_steps: int = Field(
        50, **_bounds("num_inference_steps"), description="Denoising steps of the base model."
    )
    guidance_scale: float = Field(
        4.0, **_bounds("guidance_scale"), description="How closely to follow the prompt."
    )
    num_images_per_prompt: int = Field(
        1, **_bounds("num_outputs"), description="Images to generate; image i uses seed + i."
    )
    seed: int | None = Field(
        42,
        **_bounds("seed"),
        description="Seed of the random generator; `null` picks a random one (returned).",
    )
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="What the image should not show."
    )
    seed_image: str | None = Field(
        None,
        description="Image to start from, base64-encoded PNG, JPEG or WebP, raw or as a data "
        "URI (`data:image/png;base64,...`). The output has this image's size (scaled down to "
        "at most 4 megapixels, sides floored to multiples of 8); width, height and "
        "aspect_ratio are not used then.",
    )
    strength: float = Field(
        0.2,
        ge=STRENGTH_RANGE[0],
        le=STRENGTH_RANGE[1],
        description="How much noise is added to `seed_image` (used only with seed_image).",
    )
    scheduler: SchedulerName = Field("DDIM", description="Scheduler (sampler) to use.")
    timestep_spacing: TimestepSpacing = Field(
        "linspace",
        description="Timestep spacing of the scheduler. Has no effect with KarrasDPM, whose "
        "Karras sigmas set their own spacing.",
    )
    guidance_scale_refiner: float = Field(
        1.0, **_bounds("guidance_scale_refiner"), description="Guidance scale of the refiner."
    )
    refiner: bool = Field(
        False,
        description="Refine the base model's finished image with the refiner "
        "(img2img). Cannot be combined with is_ensemble.",
    )
    num_inference_steps_refiner: int = Field(
        50,
        **_bounds("refine_steps"),
        description="Refiner steps actually run when refiner=true.",
    )
    style_selected: StyleName | None = Field(
        None,
        description="Style preset: wraps the prompt in the style's template and puts its "
        "negative prompt before yours.",
    )
    is_ensemble: bool = Field(
        False,
        description="Ensemble of expert denoisers: the base model runs the first "
        "(1 - refiner_ratio) of the noise schedule, the refiner the rest, following diffusers' "
        "denoising_end/denoising_start (the server logs the actual step counts).",
    )
    refiner_ratio: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Fraction of the schedule the refiner runs when is_ensemble=true.",
    )
    aspect_ratio: AspectRatio | None = Field(
        None,
        description="Sets width and height to SDXL's trained resolution for this ratio; "
        "giving a different width or height as well is an error.",
    )
    lora_id: str | None = Field(
        None, description="LoRA to load: <SDXL_LORA_DIR>/<lora_id>.safetensors on the server."
    )
    lora_name: str | None = Field(
        None, description='Public LoRA to load: "offset" (SDXL\'s offset-noise LoRA).'
    )
    safety_filter: bool = Field(
        True, description="Check the images for NSFW content (flagged images come back black)."
    )
    output_format: OutputFormat = Field(
        "png", description="Encoding of the returned images (an extension of this API)."
    )


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="The images, base64-encoded in output_format.")
    seeds: list[int] = Field(description="The seed of each image.")
    nsfw_content_detected: list[bool] = Field(description="Whether each image was flagged.")
    output_format: str = Field(description="The encoding of the images.")


class ErrorItem(BaseModel):
    field: str | None = Field(description="The request field at fault, if one is.")
    msg: str = Field(description="What is wrong and how to fix it.")
    type: str = Field(description="A short machine-readable kind of error.")
    loc: list[str | int] = Field(description="Where in the request the error is.")


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it.")
