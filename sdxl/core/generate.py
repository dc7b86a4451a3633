"""A request through diffusers' SDXL pipelines, in three phases the engine runs separately:

1. `prepare`: check the inputs, apply presets, fit the images, plan the steps, fix the seeds.
   No model is touched, so it runs off the engine's lock.
2. `denoise`: the base (and refiner) pipelines over the shared modules: the GPU work.
3. `finish`: watermark, paste kept pixels back, safety checker; the parameters for metadata.

`generate` runs all three for a request without trained weights (tests and benchmarks); the
engine (`sdxl.engine`) adds trained weights, cancellation and deadlines around them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdxl.config import BASE_IMAGE_REFINER_STRENGTH, Caps
from sdxl.core import prompts
from sdxl.core.images import fit_image, fit_mask, keep_unmasked
from sdxl.core.pipelines import Models
from sdxl.core.presets import apply_presets
from sdxl.core.request import Request, check_inputs
from sdxl.core.result import Result
from sdxl.core.schedulers import StepPlan, make_scheduler, plan_steps
from sdxl.core.watermark import apply_watermark

# on_step(stage, steps done, steps planned); it may raise to stop the job at once.
StepCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Prepared:
    """A checked request, ready for the GPU: presets applied, seed fixed, images fitted."""

    request: Request
    image: Image.Image | None  # at the output size (None for text to image)
    mask: Image.Image | None  # grayscale, at the output size
    width: int
    height: int
    plan: StepPlan

    @property
    def seeds(self) -> list[int]:
        return self.request.seeds()

    def summary(self) -> str:
        req, plan = self.request, self.plan
        return (
            f"mode={req.mode} refine={req.refine} size={self.width}x{self.height} "
            f"seeds={self.seeds} base steps={plan.base_steps} refiner steps={plan.refiner_steps}"
        )


def prepare(models: Models, req: Request, caps: Caps = Caps()) -> Prepared:  # noqa: B008
    """Phase 1. Raises InputError (naming the input) before anything runs; `caps` are the
    operator's limits."""
    check_inputs(req, caps)
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
    return Prepared(req, image, mask, width, height, plan)


def denoise(
    models: Models,
    job: Prepared,
    *,
    unet: Any = None,
    compiled: dict | None = None,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """Phase 2: the images before post-processing. `unet` replaces the base UNet (a resident
    fine-tune); `compiled` holds compiled modules for this job's shape (sdxl.core.compiled)."""
    compiled = compiled or {}
    with vae_tiling(models.base.vae, job.width * job.height > models.vae_tile_above):
        return _denoise(models, job, unet or compiled.get("base"), compiled, on_step)


@contextmanager
def vae_tiling(vae, on: bool):
    """Decode in tiles for this job only (the flag lives on the shared VAE)."""
    if not on:
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


def _denoise(models, job: Prepared, unet, compiled: dict, on_step) -> list[Image.Image]:
    import torch

    req = job.request
    generators = [torch.Generator("cpu").manual_seed(s) for s in job.seeds]
    refine = req.refine != "no_refiner"
    base = models.pipeline(
        req.mode, _scheduler(models, req, "base"), unet=unet, vae=compiled.get("vae")
    )
    kwargs: dict[str, Any] = {
        **_prompt_kwargs(base, req, for_refiner=False),
        "num_inference_steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "num_images_per_prompt": req.num_outputs,
        "generator": generators,
        "output_type": "latent" if refine else "pil",
        "callback_on_step_end": _progress("base", job.plan.base_steps, on_step),
    }
    if req.mode == "txt2img":
        kwargs.update(width=job.width, height=job.height)
    else:
        kwargs.update(image=job.image, strength=req.prompt_strength)
    if req.mode == "inpaint":
        kwargs.update(mask_image=job.mask, width=job.width, height=job.height)
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_end"] = req.high_noise_frac
    output = base(**kwargs).images
    if not refine:
        return output
    return _refine(models, job, output, generators, on_step, compiled)


def finish(models: Models, job: Prepared, images: list[Image.Image], **extra: Any) -> Result:
    """Phase 3: watermark, kept pixels, safety verdicts; `extra` goes into the parameters."""
    req = job.request
    if req.apply_watermark:
        images = apply_watermark(images)
    if job.mask is not None:  # after the mark, so kept pixels stay exactly the input's
        images = [keep_unmasked(img, job.image, job.mask) for img in images]
    nsfw = [False] * len(images)
    if not req.disable_safety_checker:
        nsfw = models.safety_checker.check(images)
    parameters = {**_parameters(job), **extra}
    return Result(images, job.seeds, req.mode, job.plan, parameters=parameters, nsfw=nsfw)


def generate(models: Models, req: Request, on_step: StepCallback | None = None) -> Result:
    """All three phases at once, for a request without trained weights."""
    if not req.adapters.empty:
        raise ValueError("requests with trained weights run through sdxl.engine.Engine")
    job = prepare(models, req)
    return finish(models, job, denoise(models, job, on_step=on_step))


def _prompt_kwargs(pipe, req: Request, for_refiner: bool) -> dict[str, Any]:
    """Prompt arguments for one stage. An empty negative prompt means none, so SDXL's zeros
    apply; the refiner has only the second text encoder and reads `prompt_2` where given.
    Prompts past 77 tokens are encoded in chunks (sdxl.core.prompts) instead of being cut."""
    negative = None if req.negative_prompt == "" else req.negative_prompt
    if for_refiner:
        prompt = req.prompt if req.prompt_2 is None else req.prompt_2
        if req.negative_prompt_2 is not None:
            negative = req.negative_prompt_2
        args = {"prompt": prompt, "negative_prompt": negative}
    else:
        args = {
            "prompt": req.prompt,
            "prompt_2": req.prompt_2,
            "negative_prompt": negative,
            "negative_prompt_2": req.negative_prompt_2,
        }
    texts = prompts.stage_texts(
        pipe, args["prompt"], args.get("prompt_2"), negative, args.get("negative_prompt_2")
    )
    embeds = prompts.encode(pipe, texts, zero_negative=pipe.config.force_zeros_for_empty_prompt)
    return args if embeds is None else embeds


def _refine(models, job: Prepared, latents, generators, on_step, compiled) -> list[Image.Image]:
    req = job.request
    refiner = models.pipeline(
        "refiner",
        _scheduler(models, req, "refiner"),
        unet=compiled.get("refiner"),
        vae=compiled.get("vae"),
    )
    guidance = (
        req.guidance_scale if req.guidance_scale_refiner is None else req.guidance_scale_refiner
    )
    kwargs: dict[str, Any] = {
        **_prompt_kwargs(refiner, req, for_refiner=True),
        "image": latents,
        "num_images_per_prompt": req.num_outputs,
        "num_inference_steps": job.plan.refiner_schedule,
        "guidance_scale": guidance,
        "generator": generators,
        "callback_on_step_end": _progress("refiner", job.plan.refiner_steps, on_step),
    }
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_start"] = req.high_noise_frac
    else:
        kwargs["strength"] = BASE_IMAGE_REFINER_STRENGTH
    return refiner(**kwargs).images


def _scheduler(models: Models, req: Request, stage: str):
    return make_scheduler(req.scheduler, models.scheduler_config(stage), req.timestep_spacing)


def _progress(stage: str, total: int, on_step: StepCallback | None):
    """diffusers' step-end callback: reports the step; an exception from `on_step` propagates
    out of the pipeline, so a stopped job ends at once (no further step, no VAE decode)."""

    def callback(pipe, index, timestep, tensors):
        if on_step is not None:
            on_step(stage, index + 1, total)
        return tensors

    return callback


def _parameters(job: Prepared) -> dict:
    params = job.request.describe()
    params.update(
        mode=job.request.mode,
        width=job.width,
        height=job.height,
        base_steps=job.plan.base_steps,
        refiner_steps=job.plan.refiner_steps,
        model="stable-diffusion-xl-1.0",
    )
    return params


def with_prompts(job: Prepared, rewrite: Callable[[str | None], str | None]) -> Prepared:
    """`job` with every prompt field rewritten (trained weights' special tokens)."""
    req = job.request
    fields = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
    changes = {name: rewrite(getattr(req, name)) for name in fields}
    return dataclasses.replace(job, request=dataclasses.replace(req, **changes))
