"""Small helpers for tests: images, reference schedulers, pixel comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# An independent statement of what each scheduler name means (the product has its own table).
REFERENCE_SCHEDULERS = {
    "DDIM": ("DDIMScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
}


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def reference_scheduler(pipe, name: str, **extra):
    """A scheduler for `pipe` built straight from diffusers' classes and the saved config."""
    import diffusers

    cls_name, options = REFERENCE_SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **options, **extra)


def with_scheduler(pipe, scheduler):
    """A copy of a diffusers pipeline object with another scheduler (the original untouched)."""
    return pipe.__class__(**{**pipe.components, "scheduler": scheduler}, add_watermarker=False)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def assert_same_image(a: Image.Image, b: Image.Image, tolerance: int = 0) -> None:
    assert a.size == b.size, (a.size, b.size)
    diff = np.abs(pixels(a) - pixels(b)).max()
    assert diff <= tolerance, f"images differ by up to {diff}/255"


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic colourful gradient, a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, size=3)
    channels = [127 + 120 * np.sin(x / 37 + y / 53 + p) for p in phase]
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def half_mask(width: int, height: int) -> Image.Image:
    """White (repaint) on the right half, black (keep) on the left."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 255
    return Image.fromarray(mask)


def save(img: Image.Image, folder: Path, name: str) -> Path:
    path = folder / name
    img.save(path)
    return path


_UPLOADS: list[Path] = []


def cog_upload(img: Image.Image | bytes, name: str = "file.png") -> Path:
    """A file where Cog puts what it downloads or decodes for a request (a NamedTemporaryFile in
    the temp folder), handed over as cog.Path: what run() receives for a file input."""
    import tempfile

    from cog import Path as CogPath

    with tempfile.NamedTemporaryFile(suffix=name, delete=False) as out:
        if isinstance(img, bytes):
            out.write(img)
        else:
            img.save(out, "PNG")
    _UPLOADS.append(Path(out.name))
    return CogPath(out.name)


def remove_uploads() -> None:
    while _UPLOADS:
        _UPLOADS.pop().unlink(missing_ok=True)
