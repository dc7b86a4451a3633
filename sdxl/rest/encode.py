"""Images out: PIL images to base64 text in the requested format."""

from __future__ import annotations

import base64
import io

from PIL import Image

from sdxl.rest.tables import OUTPUT_FORMATS, OUTPUT_QUALITY


def encode_image(image: Image.Image, output_format: str) -> str:
    """`image` encoded as `output_format` (png | jpeg | webp), then base64 (no data URI prefix)."""
    buffer = io.BytesIO()
    pil_format = OUTPUT_FORMATS[output_format]
    if pil_format == "PNG":
        image.save(buffer, pil_format)
    else:
        image.convert("RGB").save(buffer, pil_format, quality=OUTPUT_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_images(images: list[Image.Image], output_format: str) -> list[str]:
    return [encode_image(image, output_format) for image in images]
