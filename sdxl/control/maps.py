"""Control maps: a unit's control image made what its ControlNet reads, at the output size.

The image meets the output size by the unit's resize mode (AUTOMATIC1111's: stretched, cropped
to the output's aspect, or fitted inside and padded with black), and is turned into a map by
its preprocessor: OpenCV's Canny, the depth model (`sdxl.control.depth`, run on the device by
the caller's `on_device`), or nothing (the image is a map already). With a `processor_res`
the preprocessor works at that short side and the map is resized to the output afterwards.

CPU work: it runs on a preparation thread, never on the GPU thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from sdxl.inputs.control_units import ControlUnit

RESAMPLE = Image.Resampling.LANCZOS  # what diffusers' image processor resizes PIL images with


def control_map(
    unit: ControlUnit,
    image: Image.Image,
    width: int,
    height: int,
    depth: Callable[[Image.Image], Image.Image] | None = None,
) -> Image.Image:
    """`image` as `unit`'s control map (RGB, width x height); `depth(image)` makes a depth
    map (the engine's estimator, run on the device)."""
    image = image.convert("RGB")
    work = working_size(width, height, unit.processor_res)
    fitted = fit(image, *work, unit.resize_mode)
    made = preprocess(unit, fitted, depth)
    if unit.resize_mode == "fill":
        made = pad(made, *work)
    if made.size != (width, height):
        made = made.resize((width, height), RESAMPLE)
    return made


def working_size(width: int, height: int, processor_res: int | None) -> tuple[int, int]:
    """The size the preprocessor works at: the output's, or its aspect at `processor_res` on
    the short side."""
    if processor_res is None:
        return width, height
    scale = processor_res / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` stretched to width x height ("resize"), scaled to cover it and centre-cropped
    ("crop"), or scaled to fit inside it ("fill": `pad` completes it after preprocessing)."""
    if mode == "resize":
        return image.resize((width, height), RESAMPLE)
    iw, ih = image.size
    cover = mode == "crop"
    scale = max(width / iw, height / ih) if cover else min(width / iw, height / ih)
    size = (max(1, round(iw * scale)), max(1, round(ih * scale)))
    scaled = image.resize(size, RESAMPLE)
    if not cover:
        return scaled
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def pad(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` centred on black at width x height."""
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return canvas


def preprocess(unit: ControlUnit, image: Image.Image, depth: Any = None) -> Image.Image:
    """The map of `image` by the unit's preprocessor."""
    maker = unit.map_maker
    if maker == "canny":
        return canny(image, unit.low_threshold, unit.high_threshold)
    if maker == "depth":
        if depth is None:
            raise RuntimeError("a depth map was asked for with no depth estimator")
        return depth(image).convert("RGB")
    return image


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    """OpenCV's Canny edges of the RGB image, white on black, in three channels."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
