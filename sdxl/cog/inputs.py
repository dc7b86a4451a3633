"""Cog's inputs -> a checked request: the predictor's inputs under their own names.

coglet has checked types, bounds and choices against the schema already; the rules
(`sdxl.inputs.rules`) add the operator's caps. Image inputs are read here (only files Cog itself
wrote for this request) and decoded when the engine prepares the job.

`replicate_weights` may name a file on this machine only inside the folders the predictor
reads weights from (`reading_from`: SDXL_LOCAL_WEIGHTS_DIRS, which `python -m sdxl predict`
extends with the folder of the file its user names, and the predictor's own staging folder),
because a Cog image on Replicate takes its inputs from strangers. `cog predict -i
replicate_weights=@trained_model.tar` sends the file as a data URI: it is written into the
staging folder for the prediction's time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
import pathlib
import re
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sdxl.config import COG_INPUTS
from sdxl.errors import InputError
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import Checked, Field, Surface
from sdxl.settings import Caps, LocalFiles

if TYPE_CHECKING:
    from sdxl.engine import EngineSettings

COG = Surface(fields=tuple(Field(name, name) for name in COG_INPUTS))
FILE_INPUTS = ("image", "mask", "ip_adapter_image")
FILE_INPUTS += tuple(f"controlnet_{n}_image" for n in (1, 2, 3))
_DATA_URI = re.compile(r"data:[^,;]*((?:;[^,;]*)*),", re.IGNORECASE)


def staging_folder() -> pathlib.Path:
    """A private folder (mode 700) for the data URIs `replicate_weights` brings."""
    return pathlib.Path(tempfile.mkdtemp(prefix="sdxl-replicate-weights-"))


def reading_from(settings: EngineSettings, staging: pathlib.Path) -> EngineSettings:
    """The Cog predictor's engine settings: `replicate_weights` may also name files in its
    `staging` folder (where `checked_inputs` writes data URIs), at the boundary
    (`caps.local_files`) and when the engine reads it (`fetch.local_dirs`)."""
    dirs = (*settings.caps.local_files.dirs, staging)
    caps = dataclasses.replace(settings.caps, local_files=LocalFiles(dirs=dirs))
    fetch = dataclasses.replace(settings.fetch, local_dirs=(*settings.fetch.local_dirs, staging))
    return dataclasses.replace(settings, caps=caps, fetch=fetch)


@contextlib.contextmanager
def checked_inputs(
    inputs: dict, caps: Caps, staging: pathlib.Path, loras=None
) -> Iterator[Checked]:
    """`run()`'s arguments checked, for the time of the prediction (a data URI given as
    `replicate_weights` is a temporary file in `staging` until then), the LoRAs by `loras`
    (the engine's `lora_check(None)`: the shared names and offset); InputError
    (InvalidInputs) names every input at fault."""
    values = dict(inputs)
    for name in FILE_INPUTS:
        if values.get(name) is not None:
            values[name] = uploaded(name, values[name]).read_bytes()
    with _weights_file(values.get("replicate_weights"), staging) as weights:
        if weights is not None:
            values["replicate_weights"] = weights
        yield check_fields(values, COG, caps, loras)


@contextlib.contextmanager
def _weights_file(value: object, staging: pathlib.Path) -> Iterator[str | None]:
    """`replicate_weights` as text the rules read: a Cog Path as its path, a data URI as a
    temporary file in `staging` holding its bytes (removed at the end), else as given."""
    if isinstance(value, os.PathLike):
        yield os.fspath(value)
        return
    if not (isinstance(value, str) and value[:5].lower() == "data:"):
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="replicate-weights-", dir=staging)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_data_uri_bytes(value))
        yield name
    finally:
        pathlib.Path(name).unlink(missing_ok=True)


def _data_uri_bytes(text: str) -> bytes:
    match = _DATA_URI.match(text)
    if match is None or "base64" not in match.group(1).lower().split(";"):
        raise InputError(
            "replicate_weights is not a base64 data URI (data:application/x-tar;base64,...); "
            "give the file's path, an https URL, or @trained_model.tar to `cog predict`",
            "replicate_weights",
        )
    try:
        return base64.b64decode(text[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            "replicate_weights: the data URI's base64 is not valid; send the file again",
            "replicate_weights",
        ) from None


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
