"""The hires fix's pixel upscalers: Pillow's resampling ("None" is A1111's plain Lanczos
resize) or an ESRGAN-family model (`sdxl.upscale.models.Upscalers`), applied while the image is
smaller than the target, then a Lanczos resize to it. When the aspect changes, the image is
resized to cover the target and centre-cropped (A1111's "crop and resize")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

PILLOW_FILTERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS}
PILLOW_FILTERS["Nearest"] = Image.Resampling.NEAREST


def resize_pixels(
    images: list[Image.Image],
    width: int,
    height: int,
    name: str,
    models: Any = None,
    on_tile: Callable | None = None,
) -> list[Image.Image]:
    """Each image upscaled by `name` to exactly width x height. `models` (an `Upscalers`)
    runs the ESRGAN-family models; `on_tile` is told of each tile they run."""
    return [_one(image, width, height, name, models, on_tile) for image in images]


def _one(image: Image.Image, width: int, height: int, name: str, models, on_tile):
    cover = max(width / image.width, height / image.height)  # the size that covers the target
    cover_w, cover_h = (
        max(width, round(image.width * cover)),
        max(height, round(image.height * cover)),
    )
    if name in PILLOW_FILTERS:
        image = image.resize((cover_w, cover_h), PILLOW_FILTERS[name])
    else:
        if models is None:
            raise ValueError(f"no upscaler models to run {name!r}")
        while image.width < cover_w or image.height < cover_h:
            before = image.size
            image = models.upscale(image, name, on_tile)
            if image.width <= before[0] and image.height <= before[1]:
                break  # a model that does not enlarge: Lanczos does the rest
        if image.size != (cover_w, cover_h):
            image = image.resize((cover_w, cover_h), Image.Resampling.LANCZOS)
    return _centre_crop(image, width, height)


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
