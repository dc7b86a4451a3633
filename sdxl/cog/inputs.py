"""Cog's inputs -> an engine Request: file inputs checked and decoded here, nothing else."""

from __future__ import annotations

import pathlib

from sdxl.core.images import decode_image
from sdxl.core.request import Request
from sdxl.errors import InputError

FILE_INPUTS = ("image", "mask")


def request_from_inputs(inputs: dict) -> Request:
    """The Request for `run()`'s arguments; image and mask are decoded (EXIF applied)."""
    values = dict(inputs)
    for name in FILE_INPUTS:
        if values.get(name) is not None:
            values[name] = decode_image(_uploaded(name, values[name]), name)
    return Request(**values)


def _uploaded(name: str, value: object) -> pathlib.Path:
    """Cog hands uploads and URL downloads over as Paths, but a bare string as given: refuse
    it, so a request can never make the server read one of its own files."""
    if not isinstance(value, pathlib.Path):
        raise InputError(f"{name} must be a file upload, an http(s) URL or a data URI", name)
    return value
