"""The hires fix's second pass, after the first pass (`sdxl.generate.denoise`, refiner
included) under the same lock: its output upscaled to the planned size (`Generation.hires_size`)
by the request's upscaler (`sdxl.upscale`: in latent space, or on the decoded pixels), then the
base model's img2img at that size, as diffusers' SDXL img2img pipeline runs it on that input.

The pass is stage "hires" of the step callback, with its own total (`StepPlan.hires_steps`);
the callback may stop it at any step, as it stops the first pass. The request's LoRAs and
trained weights stay applied: the pass uses the job's base UNet as the first pass does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sdxl.generate.controlled import control_kwargs
from sdxl.generate.deepcache import feature_cache
from sdxl.generate.plan import Generation
from sdxl.generate.schedulers import make_scheduler
from sdxl.generate.stages import PIXELS, prompt_kwargs, step_callback
from sdxl.inputs.request import Request
from sdxl.upscale.latents import is_latent, upscale_latents
from sdxl.upscale.pixels import PILLOW_FILTERS, resize_pixels

LATENT = "latent"  # diffusers' output_type: the scaled latents, not decoded


def first_output(req: Request) -> str:
    """What the first pass ends with: latents for a latent upscaler, else decoded pixels."""
    return LATENT if is_latent(req.hires_upscaler) else PIXELS


def second_pass(
    models,
    gen: Generation,
    first: Any,
    unet: Any,
    on_step,
    controlnets: list | None = None,
    image_prompt: Any = None,
) -> np.ndarray:
    """The images' pixels ([batch, height, width, 3] in 0..1) at `gen.hires_size`, from the
    first pass's `first` (latents or pixels, as `first_output` asked). `unet` replaces the base
    UNet (a resident fine-tune); compiled modules are not used (they serve other sizes). With
    `controlnets` the units steer this pass too (diffusers' ControlNet img2img, its control
    maps resized to the target size by the pipeline, as AUTOMATIC1111's hires fix keeps them);
    with `image_prompt` the installed IP-Adapter steers it too."""
    import torch

    req = gen.request
    width, height = gen.hires_size
    image = upscale(models, req.hires_upscaler, first, width, height)
    name, spacing = req.hires_sampler
    scheduler = make_scheduler(name, models.scheduler_config("base"), spacing, gen.seeds)
    pipe = models.pipeline(
        "img2img", scheduler, unet=unet, controlnets=controlnets, image_prompt=image_prompt
    )
    kwargs: dict[str, Any] = {
        **prompt_kwargs(pipe, _hires_prompts(req), for_refiner=False),
        "image": image,
        "strength": req.hires_strength,
        "num_inference_steps": gen.plan.hires_schedule,
        "guidance_scale": req.guidance_scale,
        "num_images_per_prompt": req.num_outputs,
        "generator": [torch.Generator("cpu").manual_seed(s) for s in gen.seeds],
        "output_type": PIXELS,
        "callback_on_step_end": step_callback("hires", gen.plan.hires_steps, on_step),
    }
    if controlnets:
        kwargs.update(control_kwargs(gen, "img2img"), width=width, height=height)
    if image_prompt is not None:
        kwargs.update(image_prompt.kwargs())
    with feature_cache(pipe, req.cache_interval, gen.plan.hires_calls):
        return pipe(**kwargs).images


def upscale(models, name: str, first: Any, width: int, height: int) -> Any:
    """The first pass's output at width x height: latents interpolated, or PIL images."""
    if is_latent(name):
        return upscale_latents(first, width, height, name)
    from diffusers.image_processor import VaeImageProcessor

    images = VaeImageProcessor.numpy_to_pil(first)  # what output_type="pil" would return
    upscalers = None if name in PILLOW_FILTERS else models.upscalers  # loaded only if used
    return resize_pixels(images, width, height, name, upscalers)


def _hires_prompts(req: Request) -> Request:
    """`req` with the second pass's own prompt and negative prompt, where it has them."""
    return dataclasses.replace(
        req,
        prompt=req.hires_prompt or req.prompt,
        negative_prompt=req.hires_negative_prompt or req.negative_prompt,
    )
