"""Request in, images out. No Cog import: the Cog predictor and the REST API both call this."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sdxl import prompts
from sdxl.config import BASE_IMAGE_REFINER_STRENGTH
from sdxl.images import fit_image, fit_mask, keep_unmasked, load_image
from sdxl.lora import AdapterSpec, adapters_applied
from sdxl.pipelines import Models
from sdxl.presets import apply_presets
from sdxl.request import Request, check_inputs
from sdxl.schedulers import StepPlan, make_scheduler, plan_steps
from sdxl.watermark import apply_watermark

log = logging.getLogger(__name__)


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    mode: str
    plan: StepPlan
    parameters: dict = field(default_factory=dict)  # what was used, for image metadata
    nsfw: list[bool] = field(default_factory=list)  # per image: flagged by the safety checker


@dataclass(frozen=True)
class _Inputs:
    """The decoded image and mask at the output size (None for text to image)."""

    image: Image.Image | None
    mask: Image.Image | None
    width: int
    height: int


def prepare(models: Models, req: Request) -> tuple[Request, _Inputs, StepPlan]:
    """Validate everything and decode the inputs; raises InputError before any denoising."""
    check_inputs(req)
    req = apply_presets(req)
    inputs = _decode_inputs(req)
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
    return req.with_seed(), inputs, plan


def generate(models: Models, req: Request, on_step=None) -> Result:
    """Run one request end to end and return PIL images (not yet encoded)."""
    req, inputs, plan = prepare(models, req)
    seeds = req.seeds()
    log.info(
        "mode=%s refine=%s seeds=%s base steps=%d refiner steps=%d",
        req.mode,
        req.refine,
        seeds,
        plan.base_steps,
        plan.refiner_steps,
    )
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    # LoRAs, a fine-tuned UNet and new tokens change the shared modules for this request
    # only: adapters_applied restores them in `finally`, whatever happens in the body.
    with adapters_applied(models, AdapterSpec.from_request(req)) as applied:
        tuned = applied.rewrite_request(req)
        images = _denoise(models, tuned, inputs, plan, generators, on_step)
    if req.apply_watermark:
        images = apply_watermark(images)
    if inputs.mask is not None:  # after the mark, so kept pixels stay exactly the input's
        images = [keep_unmasked(img, inputs.image, inputs.mask) for img in images]
    nsfw = [False] * len(images)
    if not req.disable_safety_checker:
        nsfw = models.safety_checker.check(images)
    parameters = _parameters(req, inputs, plan)
    if applied.adapters or applied.tokens or applied.finetuned_unet:
        parameters["trained_weights"] = applied.describe()
    return Result(images, seeds, req.mode, plan, parameters=parameters, nsfw=nsfw)


def _decode_inputs(req: Request) -> _Inputs:
    if req.image is None:
        return _Inputs(None, None, req.width, req.height)
    image = fit_image(load_image(req.image, "image"), "image")
    mask = None
    if req.mask is not None:
        mask = fit_mask(load_image(req.mask, "mask"), image.size)
    return _Inputs(image, mask, image.width, image.height)


def _prompt_kwargs(pipe, req: Request, for_refiner: bool) -> dict[str, Any]:
    """Prompt arguments for one stage. An empty negative prompt means none, so SDXL's zeros
    apply; the refiner has only the second text encoder and reads `prompt_2` where given.
    Prompts past 77 tokens are encoded in chunks (sdxl.prompts) instead of being cut."""
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


def _denoise(models, req, inputs, plan, generators, on_step) -> list[Image.Image]:
    refine = req.refine != "no_refiner"
    base = models.pipeline(req.mode, _scheduler(models, req, "base"))
    kwargs: dict[str, Any] = {
        **_prompt_kwargs(base, req, for_refiner=False),
        "num_inference_steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "num_images_per_prompt": req.num_outputs,
        "generator": generators,
        "output_type": "latent" if refine else "pil",
        "callback_on_step_end": _progress("base", plan.base_steps, on_step),
    }
    if req.mode == "txt2img":
        kwargs.update(width=inputs.width, height=inputs.height)
    else:
        kwargs.update(image=inputs.image, strength=req.prompt_strength)
    if req.mode == "inpaint":
        kwargs.update(mask_image=inputs.mask, width=inputs.width, height=inputs.height)
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_end"] = req.high_noise_frac
    output = base(**kwargs).images
    if not refine:
        return output
    return _refine(models, req, plan, output, generators, on_step)


def _refine(models, req, plan, latents, generators, on_step) -> list[Image.Image]:
    refiner = models.pipeline("refiner", _scheduler(models, req, "refiner"))
    guidance = (
        req.guidance_scale if req.guidance_scale_refiner is None else req.guidance_scale_refiner
    )
    kwargs: dict[str, Any] = {
        **_prompt_kwargs(refiner, req, for_refiner=True),
        "image": latents,
        "num_images_per_prompt": req.num_outputs,
        "num_inference_steps": plan.refiner_schedule,
        "guidance_scale": guidance,
        "generator": generators,
        "callback_on_step_end": _progress("refiner", plan.refiner_steps, on_step),
    }
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_start"] = req.high_noise_frac
    else:
        kwargs["strength"] = BASE_IMAGE_REFINER_STRENGTH
    return refiner(**kwargs).images


def _scheduler(models: Models, req: Request, stage: str):
    return make_scheduler(req.scheduler, models.scheduler_config(stage), req.timestep_spacing)


def _progress(stage: str, total: int, on_step):
    """A diffusers step-end callback that logs each step and forwards it to `on_step`."""

    def callback(pipe, index, timestep, tensors):
        log.info("%s step %d/%d (t=%d)", stage, index + 1, total, int(timestep))
        if on_step is not None:
            on_step(stage, index + 1, total)
        return tensors

    return callback


def _parameters(req: Request, inputs: _Inputs, plan: StepPlan) -> dict:
    params = {
        name: getattr(req, name)
        for name in req.__dataclass_fields__
        if name not in ("image", "mask", "replicate_weights")
    }
    params.update(
        mode=req.mode,
        width=inputs.width,
        height=inputs.height,
        base_steps=plan.base_steps,
        refiner_steps=plan.refiner_steps,
        model="stable-diffusion-xl-1.0",
    )
    return params
