"""`safety_filter` on the REST API: flagged images come back black and marked."""

from __future__ import annotations

from PIL import Image

from sdxl.generate import Result
from sdxl.safety import blacken


def check_images(result: Result) -> tuple[list[Image.Image], list[bool]]:
    """(images, flags). The engine ran the checker unless safety_filter was false (then no
    image is flagged); each flagged image is replaced by a black one of the same size."""
    return blacken(result.images, result.nsfw), list(result.nsfw)
