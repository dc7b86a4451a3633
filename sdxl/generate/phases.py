"""A request through diffusers' SDXL pipelines, in three phases the engine runs separately:

1. `plan_generation`: apply presets, fit the images, plan the steps, fix the seeds (a request
   whose model rules were checked and whose images are decoded goes in). No model is touched,
   so it runs off the engine's lock.
2. `denoise`: the base (and refiner) pipelines over the shared modules: the GPU work.
3. `finish`: watermark, paste kept pixels back, safety checker; the parameters for metadata.

`generate` runs the model's checks and all three for a request without trained weights (tests
and benchmarks); the engine (`sdxl.engine`) adds trained weights, image downloads,
cancellation and deadlines around them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdxl.config import BASE_IMAGE_REFINER_STRENGTH
from sdxl.generate import prompts
from sdxl.generate.result import Result
from sdxl.generate.schedulers import StepPlan, make_scheduler, plan_steps
from sdxl.generate.watermark import apply_watermark
from sdxl.images.fit import fit_image, fit_mask, keep_unmasked
from sdxl.images.inputs import ImageSource, load
from sdxl.inputs.presets import apply_presets
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_request
from sdxl.model.deepcache import feature_cache
from sdxl.model.pipelines import Models
from sdxl.settings import Caps, FetchSettings

# on_step(stage, steps done, steps planned, the latents after that step); it may raise to stop
# the job at once. The latents are the pipeline's own: read them, never change them.
StepCallback = Callable[[str, int, int, Any], None]


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

    @property
    def seeds(self) -> list[int]:
        return self.request.seeds()

    def summary(self) -> str:
        req, plan = self.request, self.plan
        return (
            f"mode={req.mode} refine={req.refine} size={self.width}x{self.height} "
            f"seeds={self.seeds} base steps={plan.base_steps} refiner steps={plan.refiner_steps}"
        )


def plan_generation(models: Models, req: Request, caps: Caps = Caps()) -> Generation:  # noqa: B008
    """Phase 1. Raises InputError (naming the input) before anything runs: an image too small,
    a mask of another aspect, a stage with no step. `caps` are the operator's limits."""
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
    return Generation(req, image, mask, width, height, plan)


def denoise(
    models: Models,
    generation: Generation,
    *,
    unet: Any = None,
    compiled: dict | None = None,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """Phase 2: the images before post-processing. `unet` replaces the base UNet (a resident
    fine-tune); `compiled` holds compiled modules for this job's shape (sdxl.model.compiled)."""
    compiled = compiled or {}
    tiled = generation.width * generation.height > models.vae_tile_above
    with vae_tiling(models.base.vae, tiled):
        return _denoise(models, generation, unet or compiled.get("base"), compiled, on_step)


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


def _denoise(models, gen: Generation, unet, compiled: dict, on_step) -> list[Image.Image]:
    import torch

    req = gen.request
    generators = [torch.Generator("cpu").manual_seed(s) for s in gen.seeds]
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
        "callback_on_step_end": _progress("base", gen.plan.base_steps, on_step),
    }
    if req.mode == "txt2img":
        kwargs.update(width=gen.width, height=gen.height)
    else:
        kwargs.update(image=gen.image, strength=req.prompt_strength)
    if req.mode == "inpaint":
        kwargs.update(mask_image=gen.mask, width=gen.width, height=gen.height)
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_end"] = req.high_noise_frac
    with feature_cache(base, req.cache_interval):
        output = base(**kwargs).images
    if not refine:
        return output
    return _refine(models, gen, output, generators, on_step, compiled)


def finish(models: Models, gen: Generation, images: list[Image.Image], **extra: Any) -> Result:
    """Phase 3: watermark, kept pixels, safety verdicts; `extra` goes into the parameters."""
    req = gen.request
    if req.apply_watermark:
        images = apply_watermark(images)
    if gen.mask is not None:  # after the mark, so kept pixels stay exactly the input's
        images = [keep_unmasked(img, gen.image, gen.mask) for img in images]
    nsfw = [False] * len(images)
    if not req.disable_safety_checker:
        nsfw = models.safety_checker.check(images)
    parameters = {**_parameters(gen), **extra}
    return Result(images, gen.seeds, req.mode, gen.plan, parameters=parameters, nsfw=nsfw)


def generate(models: Models, req: Request, on_step: StepCallback | None = None) -> Result:
    """The model's checks and all three phases at once, for a request without trained weights
    whose images are decoded or given as bytes."""
    if not req.adapters.empty:
        raise ValueError("requests with trained weights run through sdxl.engine.Engine")
    check_request(req)
    generation = plan_generation(models, with_images(req))
    return finish(models, generation, denoise(models, generation, on_step=on_step))


def with_images(req: Request, fetch: FetchSettings | None = None, check=None) -> Request:
    """`req` with its image and mask decoded (fetched first when they are URLs)."""
    loaded = {
        name: load(source, fetch or FetchSettings(), check)
        for name in ("image", "mask")
        if isinstance(source := getattr(req, name), ImageSource)
    }
    return dataclasses.replace(req, **loaded) if loaded else req


def _prompt_kwargs(pipe, req: Request, for_refiner: bool) -> dict[str, Any]:
    """Prompt arguments for one stage. An empty negative prompt means none, so SDXL's zeros
    apply; the refiner has only the second text encoder and reads `prompt_2` where given.
    Prompts past 77 tokens are encoded in chunks (sdxl.generate.prompts) instead of being cut."""
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


def _refine(models, gen: Generation, latents, generators, on_step, compiled) -> list[Image.Image]:
    req = gen.request
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
        "num_inference_steps": gen.plan.refiner_schedule,
        "guidance_scale": guidance,
        "generator": generators,
        "callback_on_step_end": _progress("refiner", gen.plan.refiner_steps, on_step),
    }
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_start"] = req.high_noise_frac
    else:
        kwargs["strength"] = BASE_IMAGE_REFINER_STRENGTH
    with feature_cache(refiner, req.cache_interval):  # each stage caches its own features
        return refiner(**kwargs).images


def _scheduler(models: Models, req: Request, stage: str):
    return make_scheduler(req.scheduler, models.scheduler_config(stage), req.timestep_spacing)


def _progress(stage: str, total: int, on_step: StepCallback | None):
    """diffusers' step-end callback: reports the step; an exception from `on_step` propagates
    out of the pipeline, so a stopped job ends at once (no further step, no VAE decode)."""

    def callback(pipe, index, timestep, tensors):
        if on_step is not None:
            on_step(stage, index + 1, total, tensors["latents"])
        return tensors

    return callback


def _parameters(gen: Generation) -> dict:
    params = gen.request.describe()
    params.update(
        mode=gen.request.mode,
        width=gen.width,
        height=gen.height,
        base_steps=gen.plan.base_steps,
        refiner_steps=gen.plan.refiner_steps,
        model="stable-diffusion-xl-1.0",
    )
    return params


def with_prompts(gen: Generation, rewrite: Callable[[str | None], str | None]) -> Generation:
    """`gen` with every prompt field rewritten (trained weights' special tokens)."""
    req = gen.request
    fields = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
    changes = {name: rewrite(getattr(req, name)) for name in fields}
    return dataclasses.replace(gen, request=dataclasses.replace(req, **changes))
