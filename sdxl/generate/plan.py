"""Phase 1 of a generation: a checked request made ready for the GPU (presets applied, seed
fixed, images fitted, steps planned). No model is touched, so it runs off the engine's lock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from sdxl.config import BASE_IMAGE_REFINER_STRENGTH
from sdxl.generate.schedulers import plan_hires, plan_steps
from sdxl.images.fit import fit_image, fit_mask
from sdxl.images.result import StepPlan
from sdxl.inputs.hires_size import hires_size
from sdxl.inputs.presets import apply_presets
from sdxl.inputs.request import Request
from sdxl.settings import Caps


@dataclass(frozen=True)
class Generation:
    """A checked request, ready for the GPU: presets applied, seed fixed, images fitted, steps
    planned."""

    request: Request
    image: Image.Image | None  # at the output size (None for text to image)
    mask: Image.Image | None  # grayscale, at the output size
    width: int
    height: int
    plan: StepPlan
    hires_size: tuple[int, int] | None = None  # the hires fix's (width, height); None: no pass
    # One control map per ControlNet unit, at width x height (made by the engine, sdxl.control)
    control_maps: tuple[Image.Image, ...] = ()

    @property
    def seeds(self) -> list[int]:
        return self.request.seeds()

    def summary(self) -> str:
        req, plan = self.request, self.plan
        return (
            f"mode={req.mode} refine={req.refine} size={self.width}x{self.height} "
            f"seeds={self.seeds} base steps={plan.base_steps} refiner steps={plan.refiner_steps}"
            + self._hires_summary()
            + self._control_summary()
        )

    def _control_summary(self) -> str:
        units = self.request.controls
        if not units:
            return ""
        shown = ", ".join(f"{u.type} ({u.map_maker}) x{u.conditioning_scale:g}" for u in units)
        return f" controlnet={shown}"

    def _hires_summary(self) -> str:
        if self.hires_size is None:
            return ""
        width, height = self.hires_size
        upscaler = self.request.hires_upscaler
        return f" hires={width}x{height} ({upscaler}) hires steps={self.plan.hires_steps}"


def plan_generation(models, req: Request, caps: Caps = Caps()) -> Generation:  # noqa: B008
    """Raises InputError (naming the input) before anything runs: an image too small, a mask
    of another aspect, a stage with no step. `models` gives the pristine scheduler configs;
    `caps` are the operator's limits."""
    req = apply_presets(req).with_seed()
    image = mask = None
    width, height = req.width, req.height
    if req.image is not None:
        image = fit_image(req.image, "image", caps.max_pixels)
        width, height = image.size
        if req.mask is not None:
            mask = fit_mask(req.mask, image.size)
    plan = plan_steps(  # raises StepPlanError, an InputError, before any denoising
        req.scheduler,
        models.scheduler_config("base"),
        models.scheduler_config("refiner"),
        steps=req.num_inference_steps,
        spacing=req.timestep_spacing,
        strength=None if req.image is None else req.prompt_strength,
        refine=req.refine,
        high_noise_frac=req.high_noise_frac,
        refine_steps=req.refine_steps,
        refine_strength=BASE_IMAGE_REFINER_STRENGTH,
    )
    target = None
    if req.hires:
        sizes = (req.hires_scale, req.hires_width, req.hires_height)
        target = hires_size(width, height, *sizes, caps.max_pixels)
        scheduler, spacing = req.hires_sampler
        plan = plan_hires(
            plan,
            scheduler,
            models.scheduler_config("base"),
            steps=req.hires_steps or req.num_inference_steps,
            spacing=spacing,
            strength=req.hires_strength,
        )
    return Generation(req, image, mask, width, height, plan, target)


def with_prompts(gen: Generation, rewrite: Callable[[str | None], str | None]) -> Generation:
    """`gen` with every prompt field rewritten (trained weights' special tokens)."""
    req = gen.request
    fields = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
    fields += ("hires_prompt", "hires_negative_prompt")
    changes = {name: rewrite(getattr(req, name)) for name in fields}
    return dataclasses.replace(gen, request=dataclasses.replace(req, **changes))
