"""Cog's inputs -> an engine Request: file inputs checked and decoded here, nothing else."""

from __future__ import annotations

import os
import pathlib
import tempfile

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
    """A file Cog downloaded or decoded for this request; anything else is refused, so that a
    request can never make the server read one of its own files.

    Cog writes what it fetches (an http(s) URL, a data URI) to `tempfile.NamedTemporaryFile`
    in this process's temp folder and hands over its Path; a plain string ("/etc/hostname")
    arrives as it was sent (coglet 0.23). Both are checked: the type, and the place."""
    if not (isinstance(value, pathlib.Path) and _written_by_cog(value)):
        raise InputError(f"{name} must be a file upload, an http(s) URL or a data URI", name)
    return value


def _written_by_cog(path: pathlib.Path) -> bool:
    real = pathlib.Path(os.path.realpath(path))
    temp = pathlib.Path(os.path.realpath(tempfile.gettempdir()))
    return real.parent == temp and real.name.startswith("tmp") and real.is_file()
