"""`seed_image`: base64 text in, a decoded image out (never written to disk)."""

from __future__ import annotations

import binascii
import io
import re

from PIL import Image

from sdxl.api.datacrunch.errors import InvalidInput, engine_input_error
from sdxl.config import MAX_PIXELS
from sdxl.core.images import decode_image
from sdxl.errors import InputError

FIELD = "seed_image"
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# Refuse to decode images far larger than anything the engine keeps (it scales to 4 MP).
MAX_SEED_PIXELS = 16 * MAX_PIXELS

_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


def _fail(message: str) -> InvalidInput:
    return InvalidInput(f"{FIELD}: {message}", FIELD, kind="seed_image")


def _payload(text: str) -> str:
    """The base64 part of a raw base64 string or a `data:<type>;base64,<data>` URI."""
    stripped = text.strip()
    if stripped.lower().startswith("data:"):
        match = _DATA_URI.match(stripped)
        if match is None:
            raise _fail("a data URI needs a comma before its data, as in data:image/png;base64,...")
        params = [p.lower() for p in match["params"].split(";") if p]
        if "base64" not in params:
            raise _fail("the data URI is not base64-encoded; use data:image/png;base64,<data>")
        media = match["type"].lower()
        if media and not media.startswith("image/"):
            raise _fail(f"the data URI has media type {media!r}; send an image/* data URI")
        return stripped[match.end() :]
    if re.match(r"[a-z][a-z0-9+.-]*://", stripped, re.IGNORECASE):
        raise _fail(
            "URLs are not fetched; send the image itself, base64-encoded "
            "(for example `base64 -w0 image.png`) or as a data URI"
        )
    return stripped


def decode_seed_image(text: str) -> bytes:
    """Decode `seed_image` to image bytes; raise InvalidInput naming the field otherwise.

    Line breaks and spaces (as `base64` wraps its output) and missing `=` padding are
    accepted; any other character outside the standard base64 alphabet is not.
    """
    data = _WHITESPACE.sub(b"", _payload(text).encode("ascii", errors="replace"))
    if not data:
        raise _fail("is empty; send a base64-encoded PNG, JPEG or WebP image")
    data += b"=" * (-len(data) % 4)
    try:
        raw = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as err:
        raise _fail(
            f"is not valid base64 ({err}); send standard base64 (A-Z, a-z, 0-9, +, /) or a data URI"
        ) from err
    check_image_bytes(raw)
    return raw


def check_image_bytes(raw: bytes) -> None:
    """The bytes are a PNG, JPEG or WebP of a size we will decode (header only; cheap)."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt, size = img.format, img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _fail(
            f"the decoded {len(raw)} bytes are not a readable image ({type(err).__name__}); "
            "send a PNG, JPEG or WebP"
        ) from err
    if fmt not in ACCEPTED_FORMATS:
        raise _fail(f"is a {fmt} image; send a PNG, JPEG or WebP")
    if size[0] * size[1] > MAX_SEED_PIXELS:
        raise _fail(
            f"is {size[0]}x{size[1]} pixels; the limit is {MAX_SEED_PIXELS} pixels, "
            "scale it down first"
        )


def seed_image(text: str) -> Image.Image:
    """`seed_image` decoded to a PIL image (EXIF applied); InvalidInput naming the field."""
    try:
        return decode_image(decode_seed_image(text), "image")
    except InputError as err:
        raise engine_input_error(err) from err
