"""A tiny ControlNet for the tests that run control units, until `weights tiny` builds them:
written into a weights folder only where it is missing (so the tests pass with either)."""

from __future__ import annotations

from pathlib import Path

CANNY_DIR = "controlnet/canny"
SEED = 34


def ensure_tiny_controlnet(weights: Path) -> Path:
    """weights/controlnet/canny: diffusers' ControlNet of the tiny base UNet, its parameters
    seeded random and non-zero (a fresh ControlNet's zero convolutions would change nothing)."""
    folder = Path(weights) / CANNY_DIR
    if (folder / "config.json").is_file():
        return folder
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(weights) / "base" / "unet")
    controlnet = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    staging = folder.with_name(folder.name + ".partial")
    controlnet.save_pretrained(staging, safe_serialization=True)
    staging.rename(folder)
    return folder
