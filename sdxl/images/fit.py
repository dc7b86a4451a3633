"""Decoded input images fitted to the output size, and kept pixels pasted back after inpainting.
(Images come in through `sdxl.images.inputs`.)"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from sdxl.config import MAX_PIXELS, MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE
from sdxl.images.inputs import ImageInputError

MASK_ASPECT_TOLERANCE = 0.01
FEATHER_RADIUS = 2  # pixels of soft edge inside the repainted region


def output_size_for(width: int, height: int, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Scale (width, height) down to `max_pixels` keeping the aspect, floor to multiples of 8."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), MAX_SIDE / max(width, height))
    w = int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE
    h = int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return w, h


def fit_image(img: Image.Image, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The input image at the output size: its own size, scaled down to `max_pixels` (the
    operator's SDXL_MAX_PIXELS) and floored to multiples of 8."""
    w, h = output_size_for(*img.size, max_pixels)
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(
            "{field:name} "
            + f"is {img.width}x{img.height}; each side must be at least {MIN_SIDE} pixels after "
            f"fitting to {SIZE_MULTIPLE}-pixel multiples. Upscale it first.",
            name,
            values={},
        )
    if (w, h) == img.size:
        return img
    return img.resize((w, h), Image.Resampling.LANCZOS)


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask as grayscale at `size`; its aspect must match the image's within 1%."""
    image_aspect = size[0] / size[1]
    mask_aspect = mask.width / mask.height
    if abs(mask_aspect / image_aspect - 1) > MASK_ASPECT_TOLERANCE:
        shape = f"{mask.width}x{mask.height} (aspect {mask_aspect:.3f})"
        raise ImageInputError(
            "{mask:name} is " + shape + " but the {image:name}'s aspect is "
            f"{image_aspect:.3f}; send a mask with the image's proportions",
            "mask",
            values={},
        )
    gray = mask.convert("L")
    return gray if gray.size == size else gray.resize(size, Image.Resampling.LANCZOS)


def keep_unmasked(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste the original back wherever the mask is black (kept), exactly.

    The repainted region (mask white) is feathered inwards over a few pixels, so black
    pixels always equal the input and the seam stays soft.
    """
    hard = np.asarray(mask, dtype=np.float32) >= 128
    blurred = mask.point(lambda v: 255 if v >= 128 else 0).filter(
        ImageFilter.GaussianBlur(FEATHER_RADIUS)
    )
    alpha = (np.asarray(blurred, dtype=np.float32) / 255.0) * hard
    alpha = alpha[..., None]
    out = np.asarray(generated, dtype=np.float32) * alpha
    out += np.asarray(original, dtype=np.float32) * (1.0 - alpha)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
