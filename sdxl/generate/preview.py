"""Previews of a running job: its current latents as a small image, for live views (OpenAI's
partial images, AUTOMATIC1111's current_image, the playground).

A linear projection of SDXL's four latent channels onto RGB, the community's fit of SDXL's VAE
that web UIs use for their cheap live previews: no extra weights, no VAE call, microseconds.
The image has the latents' size (an eighth of the output's). Reading the latents changes
nothing: the final pixels are the same with previews on or off.

The projection is numpy's, never torch's: previews are made on a thread of their own, and a
torch CPU kernel there would start a second OpenMP thread pool in the process. With more
OpenMP threads than cores, libgomp stops spinning in every pool for the rest of the process
(GOMP's throttled spin count), and each of the GPU thread's CPU operations then waits for its
sleeping workers to wake: 10-40 ms a step on a 2-core machine, for every later job
(bench/serving.py). The latents come as a float32 host copy (`host_latents`, on the GPU
thread).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# rgb = latents . LATENT_RGB + LATENT_RGB_BIAS, for SDXL's scaled latents (4 channels), in -1..1
LATENT_RGB = np.array(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    dtype=np.float32,
)
LATENT_RGB_BIAS = np.array([0.1084, -0.0175, -0.0011], dtype=np.float32)
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


def host_latents(latents: torch.Tensor) -> torch.Tensor:
    """The first image's latents ([1, 4, h, w]) as a float32 copy that the preview thread reads
    without a torch kernel: on the GPU thread, between two steps (a conversion on the device,
    or on the CPU in the GPU thread's own OpenMP pool). The pipeline's tensor stays as is."""
    # On a GPU the conversion is queued on the device; the preview thread copies it to the host.
    return latents[:1].detach().to(torch.float32, copy=True)


def latents_to_image(latents: torch.Tensor) -> Image.Image:
    """The first image of a batch of latents ([batch, 4, h, w], any device and dtype; a float32
    one on the host, as `host_latents` makes it, is read with numpy alone)."""
    first = _to_numpy(latents[0].detach())  # [4, h, w]
    rgb = np.einsum("chw,cr->hwr", first, LATENT_RGB) + LATENT_RGB_BIAS  # no BLAS, no OpenMP
    pixels = np.rint((np.clip(rgb, -1, 1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))


def _to_numpy(latents: torch.Tensor) -> np.ndarray:
    if latents.device.type != "cpu":
        latents = latents.to("cpu")  # a device-to-host copy
    if latents.dtype != torch.float32:
        latents = latents.float()  # only for latents not made by host_latents
    return latents.numpy()


def make_preview(stage: str, step: int, total: int, latents: torch.Tensor) -> Preview:
    image = latents_to_image(latents)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return Preview(stage, step, total, buffer.getvalue(), image.width, image.height)
