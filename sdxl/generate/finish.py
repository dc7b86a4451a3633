"""Phase 3 of a generation, on the CPU after the GPU thread has let go: the decoded pixels made
images, the watermark, the kept pixels of an inpainting pasted back, the safety checker's
verdicts (its preprocessing here; its model's short forward on the device through
`on_device`, the engine's), and the parameters for the images' metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdxl.generate.plan import Generation
from sdxl.generate.watermark import apply_watermark
from sdxl.images.fit import keep_unmasked
from sdxl.images.result import Result


def finish(models, gen: Generation, pixels: np.ndarray, on_device=None, **extra: Any) -> Result:
    """`pixels` are the VAE's decoded images as diffusers' `output_type="np"` gives them
    ([batch, height, width, 3] in 0..1); `extra` goes into the parameters."""
    from diffusers.image_processor import VaeImageProcessor

    req = gen.request
    images = VaeImageProcessor.numpy_to_pil(pixels)  # what output_type="pil" would return
    if req.apply_watermark:
        images = apply_watermark(images)
    if gen.mask is not None:  # after the mark, so kept pixels stay exactly the input's
        original, mask = _at_size(gen.image, gen.mask, images[0].size)
        images = [keep_unmasked(img, original, mask) for img in images]
    nsfw = [False] * len(images)
    if not req.disable_safety_checker:
        nsfw = models.safety_checker.check(images, on_device)
    parameters = {**_parameters(gen), **extra}
    maps = list(gen.control_maps) if req.return_control_maps else []
    return Result(
        images, gen.seeds, req.mode, gen.plan, parameters=parameters, nsfw=nsfw, control_maps=maps
    )


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
    if gen.hires_size is not None:  # the hires fix as it ran (the request's hires_* stay)
        params.update(
            hires_target_width=gen.hires_size[0],
            hires_target_height=gen.hires_size[1],
            hires_pass_steps=gen.plan.hires_steps,
        )
    return params


def _at_size(image: Image.Image, mask: Image.Image, size: tuple[int, int]):
    """The inpainting's input and mask at the output's size (the hires fix's is larger)."""
    if image.size == size:
        return image, mask
    return image.resize(size, Image.Resampling.LANCZOS), mask.resize(size, Image.Resampling.LANCZOS)
