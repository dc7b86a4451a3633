"""Previews of a running job: its current latents as a small image, for live views (OpenAI's
partial images, AUTOMATIC1111's current_image, the playground).

A linear projection of SDXL's four latent channels onto RGB, the community's fit of SDXL's VAE
that web UIs use for their cheap live previews: no extra weights, no VAE call, microseconds.
The image has the latents' size (an eighth of the output's). Reading the latents changes
nothing: the final pixels are the same with previews on or off.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# rgb = latents . LATENT_RGB + LATENT_RGB_BIAS, for SDXL's scaled latents (4 channels), in -1..1
LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
PREVIEW_QUALITY = 80  # JPEG


@dataclass(frozen=True)
class Preview:
    """One preview of a job: after `step` of `total` steps of `stage` (base or refiner)."""

    stage: str
    step: int
    total: int
    jpeg: bytes
    width: int
    height: int


def latents_to_image(latents: torch.Tensor) -> Image.Image:
    """The first image of a batch of latents ([batch, 4, h, w], any device and dtype)."""
    first = latents[0].detach().to("cpu", torch.float32)  # [4, h, w]
    rgb = torch.einsum("chw,cr->hwr", first, LATENT_RGB) + LATENT_RGB_BIAS
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def make_preview(stage: str, step: int, total: int, latents: torch.Tensor) -> Preview:
    image = latents_to_image(latents)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return Preview(stage, step, total, buffer.getvalue(), image.width, image.height)
