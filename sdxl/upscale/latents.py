"""The hires fix's latent upscalers: torch's interpolation of the first pass's (scaled)
latents to the second pass's size, by AUTOMATIC1111's names. The aspect is stretched when it
changes, as A1111 does."""

from __future__ import annotations

from typing import Any

# name -> (torch's mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def is_latent(name: str) -> bool:
    """Whether `name` upscales latents (the first pass then ends without a VAE decode)."""
    return name in LATENT_MODES


def upscale_latents(latents: Any, width: int, height: int, name: str) -> Any:
    """`latents` ([batch, 4, h, w]) interpolated to the latents of a width x height image."""
    import torch

    mode, antialias = LATENT_MODES[name]
    size = (height // 8, width // 8)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)
