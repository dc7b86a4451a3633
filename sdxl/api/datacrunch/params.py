"""DataCrunch parameters -> the engine's `Request` (Cog names). Pure: no model, no I/O.

`lora_id` and `lora_name` go to the engine, which checks them (unknown names are a 422).
"""

from __future__ import annotations

from PIL import Image

from sdxl.api.datacrunch.errors import InvalidInput
from sdxl.api.datacrunch.schema import GenerateRequest
from sdxl.api.datacrunch.tables import SCHEDULER_ALIASES
from sdxl.config import ASPECT_RATIOS
from sdxl.core.request import Request


def lora_request(body: GenerateRequest) -> dict:
    """The engine's `lora_id` / `lora_name` (checked there: unknown names are a 422)."""
    return {"lora_id": body.lora_id, "lora_name": body.lora_name}


def output_size(body: GenerateRequest) -> tuple[int, int]:
    """(width, height): from `aspect_ratio` when given, which must agree with explicit sizes.

    (The engine applies aspect_ratio too, and lets a seed_image decide the size instead.)
    """
    if body.aspect_ratio is None:
        return body.width, body.height
    width, height = ASPECT_RATIOS[body.aspect_ratio]
    for field, wanted in (("width", width), ("height", height)):
        given = getattr(body, field)
        if field in body.model_fields_set and given != wanted:
            raise InvalidInput(
                f"aspect_ratio={body.aspect_ratio!r} sets width={width} and height={height}, "
                f"but {field}={given} was also given; send either aspect_ratio or width and "
                "height",
                field,
                kind="conflict",
            )
    return width, height


def refine_mode(body: GenerateRequest) -> str:
    if body.is_ensemble and body.refiner:
        raise InvalidInput(
            "is_ensemble=true and refiner=true cannot be combined; set is_ensemble=true for "
            "the ensemble of expert denoisers, or refiner=true to refine the base image",
            "is_ensemble",
            kind="conflict",
        )
    if body.is_ensemble:
        return "expert_ensemble_refiner"
    if body.refiner:
        return "base_image_refiner"
    return "no_refiner"


def to_engine_request(body: GenerateRequest, image: Image.Image | None = None) -> Request:
    """The engine request for `body`; `image` is the decoded seed_image, if any.

    refiner_ratio r is the refiner's share of the schedule, so high_noise_frac (the base's
    share) is 1 - r. `num_inference_steps_refiner` is the number of refiner steps run.
    """
    loras = lora_request(body)
    width, height = output_size(body)
    return Request(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt or "",
        style_selected=body.style_selected,
        image=image,
        width=width,
        height=height,
        aspect_ratio=body.aspect_ratio,
        num_outputs=body.num_images_per_prompt,
        scheduler=SCHEDULER_ALIASES[body.scheduler],
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        guidance_scale_refiner=body.guidance_scale_refiner,
        prompt_strength=body.strength,
        seed=body.seed,
        refine=refine_mode(body),
        high_noise_frac=1.0 - body.refiner_ratio,
        refine_steps=body.num_inference_steps_refiner,
        timestep_spacing=body.timestep_spacing,
        disable_safety_checker=not body.safety_filter,
        **loras,
    )
