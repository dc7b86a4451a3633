"""Images out: one step for every API around one encoder. The format, the quality, the metadata
written into each file, and what becomes of images the safety checker flagged (left out, or
made black) are decided here; an API says which it wants and shapes the answer."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from sdxl.errors import UserError
from sdxl.images.result import Result


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


def encode_image(
    image: Image.Image, fmt: str, quality: int, metadata: dict | str | None = None
) -> bytes:
    """`image` as `fmt`; `quality` applies to lossy formats; `metadata` (the generation
    parameters: a dict written as JSON, or a text written as it is, such as AUTOMATIC1111's
    infotext) goes into the PNG `parameters` text chunk or the EXIF ImageDescription."""
    spec = FORMATS[fmt]
    text = metadata if metadata is None or isinstance(metadata, str) else _json(metadata)
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


def _json(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, default=str)


def encode_images(
    images: list[Image.Image], fmt: str, quality: int, metadata: list[dict | str | None]
) -> list[bytes]:
    """Each image encoded as `fmt`, in parallel: zlib and libjpeg/libwebp release the GIL."""
    pairs = list(zip(images, metadata, strict=True))

    def one(pair) -> bytes:
        return encode_image(pair[0], fmt, quality, pair[1])

    if len(pairs) <= 1:
        return [one(pair) for pair in pairs]
    with ThreadPoolExecutor(min(len(pairs), 4)) as pool:
        return list(pool.map(one, pairs))


FLAGGED = ("drop", "black")  # what becomes of a flagged image: left out, or made black


class AllFlagged(UserError):
    """Every image of a request was flagged, so a surface that leaves them out has none."""


@dataclass(frozen=True)
class OutputImage:
    """One encoded output."""

    index: int  # its place in the job's batch (image i has seed + i), or among the maps
    seed: int | None  # None for a control map
    flagged: bool  # by the safety checker (then black, with flagged="black")
    name: str  # out-0.png, ...; control-0.png, ... for control maps
    mime: str
    data: bytes
    control_map: bool = False  # a ControlNet unit's control map (return_control_maps)


def encode_outputs(
    result: Result, fmt: str, quality: int, flagged: str, texts: list[str] | None = None
) -> list[OutputImage]:
    """The result's images as `fmt` files, each with its generation parameters, output format
    and seed in its metadata (or, with `texts`, the text for each of the result's images
    instead: AUTOMATIC1111's infotext). Flagged images are left out (`flagged="drop"`;
    AllFlagged when none is left) or replaced by black images of their size (`"black"`).
    The control maps the request asked for come first, as fofr's predictor returns them."""
    if flagged not in FLAGGED:
        raise ValueError(f"flagged={flagged!r}: use one of {FLAGGED}")
    if len(result.images) != len(result.nsfw):
        raise ValueError(f"{len(result.images)} images but {len(result.nsfw)} safety flags")
    indices = list(range(len(result.images)))
    if flagged == "drop":
        indices = [i for i in indices if not result.nsfw[i]]
        if result.images and not indices:
            raise all_flagged(len(result.images))
    spec = FORMATS[fmt]
    images = [_black(result.images[i]) if result.nsfw[i] else result.images[i] for i in indices]
    written = {"output_format": fmt, **({"output_quality": quality} if spec.lossy else {})}
    if texts is not None and len(texts) != len(result.images):
        raise ValueError(f"{len(result.images)} images but {len(texts)} texts")
    metadata: list[dict | str | None] = [
        texts[i] if texts is not None else {**result.metadata(i), **written} for i in indices
    ]
    encoded = encode_images(images, fmt, quality, metadata)
    maps = encode_images(result.control_maps, fmt, quality, [None] * len(result.control_maps))
    return [
        OutputImage(n, None, False, f"control-{n}{spec.extension}", spec.mime, data, True)
        for n, data in enumerate(maps)
    ] + [
        OutputImage(i, result.seeds[i], result.nsfw[i], f"out-{n}{spec.extension}", spec.mime, data)
        for n, (i, data) in enumerate(zip(indices, encoded, strict=True))
    ]


def all_flagged(count: int) -> AllFlagged:
    what = "the image was" if count == 1 else f"all {count} images were"
    return AllFlagged(
        f"{what} flagged by the safety checker; try another prompt or seed, "
        "or set disable_safety_checker"
    )


def _black(image: Image.Image) -> Image.Image:
    return Image.new(image.mode, image.size)
