"""Phase 2 of a generation: the base (and refiner) pipelines over the shared modules, the GPU's
work, ending with the VAE's decoded pixels (with the hires fix, the first pass ends in what its
upscaler reads and `sdxl.generate.hires` runs the second). The engine runs it under its lock;
the pixels become images after the lock is released (`sdxl.generate.finish`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np

from sdxl.config import BASE_IMAGE_REFINER_STRENGTH
from sdxl.generate.controlled import control_kwargs
from sdxl.generate.deepcache import feature_cache
from sdxl.generate.hires import first_output, second_pass
from sdxl.generate.plan import Generation
from sdxl.generate.schedulers import make_scheduler
from sdxl.generate.stages import PIXELS, StepCallback, prompt_kwargs, step_callback
from sdxl.inputs.request import Request


def denoise(
    models,
    generation: Generation,
    *,
    unet: Any = None,
    compiled: dict | None = None,
    on_step: StepCallback | None = None,
    controlnets: list | None = None,
    image_prompt: Any = None,
) -> np.ndarray:
    """The images' pixels before post-processing ([batch, height, width, 3] in 0..1). `unet`
    replaces the base UNet (a resident fine-tune); `compiled` holds compiled modules for this
    job (sdxl.model.compiled); `controlnets` are the resident control models of the request's
    units (`sdxl.control.resident`), which steer the base stage with `gen.control_maps`;
    `image_prompt` an IP-Adapter installed for the job (`sdxl.control.ip_adapter`), which steers
    the base stage (and the hires fix's second pass) with its reference images."""
    compiled = compiled or {}
    width, height = generation.hires_size or (generation.width, generation.height)
    tiled = max(width * height, generation.width * generation.height) > models.vae_tile_above
    with vae_tiling(models.base.vae, tiled):
        if generation.hires_size is None:
            return _denoise(
                models,
                generation,
                unet or compiled.get("base"),
                compiled,
                on_step,
                (controlnets, image_prompt),
            )
        output = first_output(generation.request)
        guides = (controlnets, image_prompt)
        base_unet = unet or compiled.get("base")
        first = _denoise(models, generation, base_unet, compiled, on_step, guides, output)
        return second_pass(models, generation, first, unet, on_step, *guides)


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


def _denoise(
    models, gen: Generation, unet, compiled: dict, on_step, guides, output: str = PIXELS
) -> np.ndarray:
    """The first pass: `output` is diffusers' output_type of its last stage (PIXELS, or
    "latent" for the hires fix's latent upscalers); `guides` (ControlNets, an IP-Adapter's
    image prompt) steer the base stage."""
    controlnets, image_prompt = guides
    import torch

    req = gen.request
    generators = [torch.Generator("cpu").manual_seed(s) for s in gen.seeds]
    refine = req.refine != "no_refiner"
    base = models.pipeline(
        req.mode,
        _scheduler(models, req, "base", gen.seeds),
        unet=unet,
        vae=compiled.get("vae"),
        controlnets=controlnets,
        image_prompt=image_prompt,
    )
    kwargs: dict[str, Any] = {
        **prompt_kwargs(base, req, for_refiner=False),
        "num_inference_steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "num_images_per_prompt": req.num_outputs,
        "generator": generators,
        "output_type": "latent" if refine else output,
        "callback_on_step_end": step_callback("base", gen.plan.base_steps, on_step),
        **control_kwargs(gen),
        **(image_prompt.kwargs() if image_prompt is not None else {}),
    }
    if req.mode == "txt2img":
        kwargs.update(width=gen.width, height=gen.height)
    else:
        kwargs.update(image=gen.image, strength=req.prompt_strength)
        if req.controls and req.mode == "img2img":  # the map's size is the output's
            kwargs.update(width=gen.width, height=gen.height)
    if req.mode == "inpaint":
        kwargs.update(mask_image=gen.mask, width=gen.width, height=gen.height)
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_end"] = req.high_noise_frac
    with feature_cache(base, req.cache_interval, gen.plan.base_calls):
        latents = base(**kwargs).images
    if not refine:
        return latents
    return _refine(models, gen, latents, generators, on_step, compiled, output)


def _refine(models, gen: Generation, latents, generators, on_step, compiled, output: str):
    req = gen.request
    refiner = models.pipeline(
        "refiner",
        _scheduler(models, req, "refiner", gen.seeds),
        unet=compiled.get("refiner"),
        vae=compiled.get("vae"),
    )
    guidance = (
        req.guidance_scale if req.guidance_scale_refiner is None else req.guidance_scale_refiner
    )
    kwargs: dict[str, Any] = {
        **prompt_kwargs(refiner, req, for_refiner=True),
        "image": latents,
        "num_images_per_prompt": req.num_outputs,
        "num_inference_steps": gen.plan.refiner_schedule,
        "guidance_scale": guidance,
        "generator": generators,
        "output_type": output,
        "callback_on_step_end": step_callback("refiner", gen.plan.refiner_steps, on_step),
    }
    if req.refine == "expert_ensemble_refiner":
        kwargs["denoising_start"] = req.high_noise_frac
    else:
        kwargs["strength"] = BASE_IMAGE_REFINER_STRENGTH
    # Each stage caches its own features.
    with feature_cache(refiner, req.cache_interval, gen.plan.refiner_calls):
        return refiner(**kwargs).images


def _scheduler(models, req: Request, stage: str, seeds: list[int]):
    config = models.scheduler_config(stage)  # seeds: DPM++ SDE's Brownian noise, per image
    return make_scheduler(req.scheduler, config, req.timestep_spacing, seeds)
