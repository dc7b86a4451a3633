"""Small helpers for tests: images, reference schedulers, pixel comparison."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Where the pixel tests run: the CPU (every CI run), or a GPU (SDXL_TEST_DEVICE=cuda, run by
# bench/device.sh), the product and diffusers' own pipelines alike, in float32 on that device.
TEST_DEVICE = os.environ.get("SDXL_TEST_DEVICE", "cpu")
# On the CPU the product computes exactly what diffusers computes. On a GPU the same kernels in
# the same order give the same bytes in practice; a step of 2/255 is allowed there, as a bound
# until bench/device.sh has measured it (it reports the largest difference it saw).
PIXEL_TOLERANCE = 0 if TEST_DEVICE == "cpu" else 2
# The environment of the servers the tests start: float32 on the test device, no fast-path
# switch (each changes the arithmetic), as the in-process fixtures (conftest.runtime_for_tests).
SERVER_ENV = {
    "SDXL_DTYPE": "float32",
    "SDXL_DEVICE": TEST_DEVICE,
    "SDXL_CHANNELS_LAST": "0",
    "SDXL_FUSE_QKV": "0",
    "SDXL_TF32": "0",
    "SDXL_WARMUP": "0",
}

# An independent statement of what each scheduler name means (the product has its own table).
REFERENCE_SCHEDULERS = {
    "DDIM": ("DDIMScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
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
    return copied(pipe, scheduler=scheduler)


def copied(pipe, **components):
    """A copy of a diffusers pipeline object with some components replaced, its options kept
    (the refiner's requires_aesthetics_score, ...)."""
    options = {
        name: pipe.config[name]
        for name in ("requires_aesthetics_score", "force_zeros_for_empty_prompt")
        if name in pipe.config
    }
    return pipe.__class__(**{**pipe.components, **components}, **options, add_watermarker=False)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def assert_same_image(a: Image.Image, b: Image.Image, tolerance: int = PIXEL_TOLERANCE) -> None:
    assert a.size == b.size, (a.size, b.size)
    diff = np.abs(pixels(a) - pixels(b)).max()
    record = os.environ.get("SDXL_PIXEL_REPORT")  # bench/device.sh: the largest difference seen
    if record:
        with open(record, "a") as out:
            out.write(f"{diff}\n")
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


def wait_until(condition, what: str, timeout: float = 60, every: float = 0.05):
    """What `condition()` returns once it is true; the test fails naming `what` if that takes
    longer than `timeout` s (a bound against hanging, never a measure of speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    pytest.fail(f"never {what} within {timeout:g} s")


def png_base64(image: Image.Image) -> str:
    """`image` as a PNG in base64, as AUTOMATIC1111's API takes images."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def from_base64(text: str) -> Image.Image:
    """An image AUTOMATIC1111's API answers: base64, with or without a data: prefix."""
    with Image.open(io.BytesIO(base64.b64decode(text.partition(",")[2] or text))) as img:
        img.load()
        return img
