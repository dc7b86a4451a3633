"""Cog's inputs -> a checked request: the predictor's inputs under their own names.

coglet has checked types, bounds and choices against the schema already; the rules
(`sdxl.inputs.rules`) add the operator's caps. File inputs are read here (only files Cog itself
wrote for this request) and decoded when the engine prepares the job.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from sdxl.config import COG_INPUTS
from sdxl.errors import InputError
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import Checked, Field, Surface
from sdxl.settings import Caps

COG = Surface(fields=tuple(Field(name, name) for name in COG_INPUTS))
FILE_INPUTS = ("image", "mask")


def checked_inputs(inputs: dict, caps: Caps) -> Checked:
    """`run()`'s arguments checked; InputError (InvalidInputs) names every input at fault."""
    values = dict(inputs)
    for name in FILE_INPUTS:
        if values.get(name) is not None:
            values[name] = uploaded(name, values[name]).read_bytes()
    return check_fields(values, COG, caps)


def uploaded(name: str, value: object) -> pathlib.Path:
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
