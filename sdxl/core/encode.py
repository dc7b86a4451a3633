"""Images out: one encoder for every API (format names, quality and metadata decided here)."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, PngImagePlugin


@dataclass(frozen=True)
class Format:
    pil: str  # PIL's format name
    mime: str
    extension: str  # with the dot
    lossy: bool


# Every output format name any API accepts (the Cog predictor says jpg, DataCrunch jpeg).
FORMATS: dict[str, Format] = {
    "png": Format("PNG", "image/png", ".png", lossy=False),
    "jpg": Format("JPEG", "image/jpeg", ".jpg", lossy=True),
    "jpeg": Format("JPEG", "image/jpeg", ".jpg", lossy=True),
    "webp": Format("WEBP", "image/webp", ".webp", lossy=True),
}
EXIF_IMAGE_DESCRIPTION = 0x010E
# zlib level 1: 2-4x faster than PIL's default (6) at 1024x1024, files about 15% larger
# (bench/overhead.py prints both); who wants small files asks for webp or jpg.
PNG_COMPRESS_LEVEL = 1


def encode_image(image: Image.Image, fmt: str, quality: int, metadata: dict | None = None) -> bytes:
    """`image` as `fmt`; `quality` applies to lossy formats; `metadata` (the generation
    parameters) goes into a PNG text chunk or the EXIF ImageDescription."""
    spec = FORMATS[fmt]
    text = None if metadata is None else json.dumps(metadata, sort_keys=True, default=str)
    buffer = io.BytesIO()
    if not spec.lossy:
        info = PngImagePlugin.PngInfo()
        if text is not None:
            info.add_text("parameters", text)
        image.save(buffer, spec.pil, pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    else:
        options: dict = {"quality": quality}
        if text is not None:
            exif = Image.Exif()
            exif[EXIF_IMAGE_DESCRIPTION] = text
            options["exif"] = exif.tobytes()
        image.convert("RGB").save(buffer, spec.pil, **options)
    return buffer.getvalue()


def encode_images(
    images: list[Image.Image], fmt: str, quality: int, metadata: list[dict | None]
) -> list[bytes]:
    """Each image encoded as `fmt`, in parallel: zlib and libjpeg/libwebp release the GIL."""
    pairs = list(zip(images, metadata, strict=True))

    def one(pair) -> bytes:
        return encode_image(pair[0], fmt, quality, pair[1])

    if len(pairs) <= 1:
        return [one(pair) for pair in pairs]
    with ThreadPoolExecutor(min(len(pairs), 4)) as pool:
        return list(pool.map(one, pairs))
