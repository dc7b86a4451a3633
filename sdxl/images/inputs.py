"""Images in: one policy for every API (bytes, formats, pixels, decompression bombs).

At an API's boundary an image is only checked cheaply: where it comes from (a data URI, raw
base64, an http(s) URL), its size in bytes, and the format and pixel size its header states.
It is decoded once, when the engine prepares the job (`load`, after the engine has fetched a
URL).
No process-wide PIL setting is changed: the pixel limit is checked from the header here.
"""

from __future__ import annotations

import binascii
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

from sdxl.config import MAX_PIXELS, MAX_URL_CHARS
from sdxl.errors import InputError, escape

MAX_IMAGE_BYTES = 64 << 20  # an encoded image
MAX_IMAGE_PIXELS = 16 * MAX_PIXELS  # 67 megapixels: any camera; decompression bombs beyond
FORMATS = ("PNG", "JPEG", "WEBP")  # what SDXL users send; PIL opens no other format here
FORMAT_WORDS = "a PNG, JPEG or WebP"

_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_BLANKS = re.compile(rb"\s+")


class ImageInputError(InputError):
    """An input image or mask that cannot be used; the message names the input."""


def fail(name: str, why: str) -> ImageInputError:
    return ImageInputError("{field:name}" + escape(f" {why}"), name, values={})


MASK_CONVENTIONS = ("white", "transparent", "opaque")


@dataclass(frozen=True)
class ImageSource:
    """An image input as a request gives it: its bytes (checked cheaply), an http(s) URL that
    is fetched when the job is prepared, or `read` (a file this server keeps).

    A mask says which pixels to repaint: white ones (SDXL's own convention); or, when it has
    transparency, the fully transparent ones (OpenAI's edits) or the opaque ones
    (AUTOMATIC1111's), and otherwise white ones. `invert` swaps kept and repainted.
    """

    name: str  # the input: image or mask
    data: bytes | None = None
    url: str | None = None
    read: Callable[[], bytes] | None = None
    mask: str = "white"  # for a mask: one of MASK_CONVENTIONS
    invert: bool = False

    @property
    def fetches(self) -> bool:
        return self.url is not None


# ---- at the boundary: cheap -------------------------------------------------------------
def source_from_text(text: str, name: str, forms: tuple[str, ...]) -> ImageSource:
    """An image field's text as an ImageSource, checked cheaply. `forms` are what the API
    accepts: "data" (a data: URI), "base64" (raw base64), "url" (http or https)."""
    stripped = text.strip()
    if stripped[:5].lower() == "data:" and "data" in forms:
        return bytes_source(data_uri_bytes(stripped, name), name)
    if _SCHEME.match(stripped):
        scheme = stripped.split(":", 1)[0].lower()
        if "url" in forms and scheme in ("http", "https"):
            if len(stripped) > MAX_URL_CHARS:
                why = f"is a URL of {len(stripped)} characters; the limit is {MAX_URL_CHARS}"
                raise fail(name, why)
            return ImageSource(name, url=stripped)
        raise fail(name, _send_instead(forms, f"{scheme}: URLs are not accepted"))
    if "base64" in forms:
        return bytes_source(_base64_bytes(stripped.encode("ascii", "replace"), name), name)
    raise fail(name, _send_instead(forms, "is neither a URL nor a data URI"))


def _send_instead(forms: tuple[str, ...], why: str) -> str:
    ways = {"url": "an http(s) URL", "data": "a data URI", "base64": "base64 text"}
    return f"{why}; send {' or '.join(ways[f] for f in forms)}"


def data_uri_bytes(text: str, name: str) -> bytes:
    """The bytes of an image data URI (base64)."""
    match = _DATA_URI.match(text)
    if match is None:
        why = "is not a valid data URI: it needs a comma before its data, as in data:image/png;..."
        raise fail(name, why)
    params = [p.lower() for p in match["params"].split(";") if p]
    media = match["type"].lower()
    if media and not media.startswith("image/"):
        raise fail(name, f"is a data URI of type {media!r}; send an image/* data URI")
    if "base64" not in params:
        raise fail(name, "is a data URI that is not base64; use data:image/png;base64,<data>")
    return _base64_bytes(text[match.end() :].encode("ascii", "replace"), name)


def _base64_bytes(data: bytes, name: str) -> bytes:
    """Line breaks and spaces (as `base64` wraps its output) and missing `=` padding are
    accepted; any other character outside the standard base64 alphabet is not."""
    data = _BLANKS.sub(b"", data)
    if not data:
        raise fail(name, f"is empty; send {FORMAT_WORDS} image")
    if len(data) * 3 // 4 > MAX_IMAGE_BYTES:
        raise fail(name, f"is over {MAX_IMAGE_BYTES} bytes; send a smaller image")
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except binascii.Error as err:
        why = f"is not valid base64 ({err}); send standard base64 (A-Z, a-z, 0-9, +, /)"
        raise fail(name, why) from err


def bytes_source(data: bytes, name: str) -> ImageSource:
    """`data` as an ImageSource, once its header says it is an image the policy accepts."""
    check_header(data, name)
    return ImageSource(name, data=data)


def check_header(data: bytes, name: str) -> tuple[int, int]:
    """Size, format and pixels from the header only (no decoding); the image's size."""
    if len(data) > MAX_IMAGE_BYTES:
        raise fail(name, f"is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        with _opened(data) as img:
            size = img.size
    except Image.DecompressionBombError:
        size = (MAX_IMAGE_PIXELS, 2)  # PIL's own limit is far above ours: refused below
    except (OSError, SyntaxError, ValueError) as err:
        other = _other_format(data)
        if other is not None:
            raise fail(name, f"is a {other} image; send {FORMAT_WORDS}") from err
        why = f"is not a readable image ({type(err).__name__}); send {FORMAT_WORDS}"
        raise fail(name, why) from err
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        shape = f"{size[0]}x{size[1]}"
        raise fail(name, f"is {shape} pixels; the limit is {MAX_IMAGE_PIXELS}: scale it down")
    return size


def _other_format(data: bytes) -> str | None:
    """The name of an image format the policy does not take (GIF, BMP...), from its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.format if img.format not in FORMATS else None
    except Exception:
        return None


def _opened(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is lower
        return Image.open(io.BytesIO(data), formats=FORMATS)


# ---- when the job is prepared: decoded once ---------------------------------------------
def load(source: ImageSource, fetched: Callable[[ImageSource], bytes] | None = None) -> Image.Image:
    """The decoded image of `source`; `fetched(source)` gives a URL source's bytes (the engine
    fetches them, `sdxl.engine.prepare`). A mask comes back white where it repaints, black
    elsewhere."""
    if source.data is not None:
        data = source.data
    elif source.read is not None:
        data = source.read()
    elif fetched is not None:
        data = fetched(source)
    else:
        raise ValueError(f"{source.name} is a URL and nothing fetches it here")
    if source.mask == "white" and not source.invert:
        return decode(data, source.name)
    return decode_mask(data, source.name, source.mask, source.invert)


def decode(data: bytes, name: str) -> Image.Image:
    """Decode an image fully, apply its EXIF orientation, return it as RGB (transparency
    flattened onto white). `name` is the input ("image" or "mask")."""
    img = _decoded(data, name)
    if _transparent(img):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def decode_mask(data: bytes, name: str, convention: str, invert: bool) -> Image.Image:
    """A mask as SDXL reads it (RGB, white = repaint), from `convention` (MASK_CONVENTIONS):
    with transparency, its fully transparent or its opaque pixels repaint; without, white."""
    img = _decoded(data, name)
    alpha = img.convert("RGBA").getchannel("A") if _transparent(img) else None
    if convention != "white" and alpha is not None and alpha.getextrema() != (255, 255):
        if convention == "transparent":
            gray = alpha.point(lambda a: 255 if a == 0 else 0)
        else:
            gray = alpha.point(lambda a: 255 if a > 128 else 0)
    else:
        gray = decode(data, name).convert("L")
    if invert:
        gray = gray.point(lambda v: 255 - v)
    return gray.convert("RGB")


def _decoded(data: bytes, name: str) -> Image.Image:
    check_header(data, name)
    try:
        with _opened(data) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise fail(name, f"is not a readable image ({err}); send {FORMAT_WORDS}") from err


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
