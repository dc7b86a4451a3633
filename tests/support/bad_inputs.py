"""The cases of the bad-input matrix (tests/test_bad_inputs.py): made from each API's own
published schema (every input: wrong type, out of range, empty, huge, not finite, a wrong
choice, unicode and control characters) plus hostile files and the edges of the model.

A case is (label, input changes, field, expect): `expect` is "error" (a 4xx or a failed
prediction whose message names `field`), "image" (a correct image) or "either" (one of the
two; never a 5xx, never a traceback).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 256
HUGE_TEXT = "a cat, " * 1430  # 10,010 characters
WEIRD_TEXT = "café 🐈 ∑ 漢字 \u202e \x00\x01\x07 tab\t newline\n"


@dataclass(frozen=True)
class Case:
    label: str
    changes: dict
    field: str
    expect: str  # error | image | either


def resolve(prop: dict, schema: dict) -> dict:
    """One input's schema with $ref/allOf/anyOf folded in (null alternatives dropped)."""
    out = dict(prop)
    for key in ("allOf", "anyOf"):
        for part in out.pop(key, []):
            if part.get("type") == "null":
                continue
            if "$ref" in part:
                part = schema["components"]["schemas"][part["$ref"].rsplit("/", 1)[1]]
            out.update({k: v for k, v in part.items() if k not in ("title", "description")})
    return out


def schema_cases(properties: dict, schema: dict, skip: tuple[str, ...] = ()) -> list[Case]:
    """Every input's wrong values, from the API's own published schema."""
    cases = []
    for name, raw in properties.items():
        if name in skip:
            continue
        prop = resolve(raw, schema)
        kind = prop.get("type")
        wrong = {"integer": "seven", "number": "seven", "boolean": "yes", "string": 12345}
        if kind in wrong:
            cases.append(Case(f"{name} of the wrong type", {name: wrong[kind]}, name, "error"))
        if kind in ("integer", "number"):
            low = prop.get("minimum", prop.get("exclusiveMinimum"))
            high = prop.get("maximum", prop.get("exclusiveMaximum"))
            if low is not None:
                below = low - (1 if kind == "integer" else 0.5)
                if "exclusiveMinimum" in prop:
                    below = low
                cases.append(Case(f"{name} below its range", {name: below}, name, "error"))
            if high is not None:
                above = high + (1 if kind == "integer" else 0.5)
                if "exclusiveMaximum" in prop:
                    above = high
                cases.append(Case(f"{name} above its range", {name: above}, name, "error"))
            cases.append(Case(f"{name} huge", {name: 10**30}, name, "error"))
            cases.append(Case(f"{name} boolean", {name: True}, name, "error"))
        if kind == "number":
            cases.append(Case(f"{name} infinite", {name: float("inf")}, name, "error"))
            cases.append(Case(f"{name} NaN", {name: float("nan")}, name, "error"))
        if kind == "integer":
            cases.append(Case(f"{name} a fraction", {name: 2.5}, name, "error"))
        if "enum" in prop:
            cases.append(Case(f"{name} not a choice", {name: "no-such-choice"}, name, "error"))
            cases.append(Case(f"{name} empty", {name: ""}, name, "error"))
        elif kind == "string" and prop.get("format") == "uri":
            cases.append(Case(f"{name} empty", {name: ""}, name, "error"))
            cases.append(Case(f"{name} a server path", {name: "/etc/passwd"}, name, "error"))
        elif kind == "string" and "prompt" in name:
            cases.append(Case(f"{name} empty", {name: ""}, name, "image"))
            cases.append(Case(f"{name} unicode, control chars", {name: WEIRD_TEXT}, name, "image"))
            cases.append(Case(f"{name} 10k characters", {name: HUGE_TEXT}, name, "either"))
    return cases


# ---- files ---------------------------------------------------------------------------------
def photo(size=(SIZE, SIZE), mode="RGB") -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    rgb = np.stack([127 + 120 * np.sin(x / 37 + y / 53 + p) for p in (0, 2, 4)], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bomb() -> bytes:
    """A 170 KB PNG that decodes to 144 megapixels."""
    return encoded(Image.new("L", (12_000, 12_000)), optimize=True)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    return encoded(photo((320, SIZE)), "JPEG", exif=exif.tobytes())


def sixteen_bit() -> bytes:
    values = (np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE)).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16"), image.mode
    return encoded(image)


def image_files() -> list[tuple[str, bytes, str]]:
    """(label, bytes, expect) for the image input."""
    png = encoded(photo())
    jpeg = encoded(photo(), "JPEG")
    return [
        ("not an image", b"just some text, not an image", "error"),
        ("truncated PNG", png[: len(png) // 2], "error"),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], "error"),
        ("a decompression bomb", bomb(), "error"),
        ("a CMYK JPEG", encoded(photo(mode="CMYK"), "JPEG"), "image"),
        ("a 16-bit PNG", sixteen_bit(), "image"),
        ("an RGBA PNG", encoded(photo(mode="RGBA")), "image"),
        ("a palette PNG", encoded(photo(mode="P")), "image"),
        ("an EXIF-rotated JPEG", rotated_jpeg(), "image"),
        ("a grayscale PNG", encoded(photo(mode="L")), "image"),
        ("too small", encoded(photo((64, 64))), "error"),
    ]


def mask_files() -> list[tuple[str, bytes, str]]:
    half = np.zeros((SIZE, SIZE), np.uint8)
    half[:, SIZE // 2 :] = 255
    return [
        ("a mask of another size, same aspect", encoded(Image.new("L", (128, 128), 255)), "image"),
        ("a mask of another aspect", encoded(Image.new("L", (SIZE, 128), 255)), "error"),
        ("an all-black mask", encoded(Image.new("L", (SIZE, SIZE), 0)), "image"),
        ("an all-white mask", encoded(Image.new("L", (SIZE, SIZE), 255)), "image"),
        ("a mask that is not an image", b"not a mask", "error"),
    ]


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
