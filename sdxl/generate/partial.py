"""The images of a job stopped early (AUTOMATIC1111's interrupt): the latents it had after its
last step, decoded by the VAE as the pipeline decodes its final ones, so the job ends with
images instead of none. A full decode, not a preview's projection."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdxl.generate.denoise import vae_tiling
from sdxl.generate.plan import Generation


def decode_latents(models, generation: Generation, latents: Any) -> np.ndarray:
    """`latents` ([batch, 4, h, w], scaled as the pipelines hold them) as pixels
    ([batch, height, width, 3] in 0..1), as diffusers' output_type="np" gives them."""
    import torch

    vae = models.base.vae
    tiled = generation.width * generation.height > models.vae_tile_above
    with torch.no_grad(), vae_tiling(vae, tiled):
        scaled = _unscaled(latents.to(vae.device, vae.dtype), vae.config)
        image = vae.decode(scaled, return_dict=False)[0]
        pixels = (image * 0.5 + 0.5).clamp(0, 1)
    return pixels.permute(0, 2, 3, 1).float().cpu().numpy()


def _unscaled(latents, config):
    """The VAE's own latents: the scaling (and, where the VAE has them, the mean and standard
    deviation) the pipelines apply undone."""
    import torch

    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is None or std is None:
        return latents / config.scaling_factor
    mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
    std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
    return latents * std / config.scaling_factor + mean
