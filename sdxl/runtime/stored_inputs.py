"""A stored job's input made an engine Request again: for a prediction claimed after a restart
or on another replica (the one created here runs the Request its API checked, never reparsed).

Images become sources: this server's uploads are read from the store, never fetched over
HTTP; data URIs are decoded; other URLs are fetched when the job is prepared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from sdxl.errors import InputError
from sdxl.images.inputs import ImageSource, data_uri_bytes
from sdxl.inputs.control_units import FLAT_INPUTS, with_controls
from sdxl.inputs.image_prompt import with_image_prompt
from sdxl.inputs.lora_refs import with_loras
from sdxl.inputs.request import Request
from sdxl.inputs.surface import REQUEST_FIELDS

IMAGE_INPUTS = ("image", "mask", "ip_adapter_image")
IMAGE_INPUTS += tuple(sorted(name for name in FLAT_INPUTS if name.endswith("_image")))
READ_INTO_FIELDS = FLAT_INPUTS | {"ip_adapter_image"}  # inputs the boundary reads into others

_FILE_PATH = re.compile(r"/v1/files/([a-z0-9]{1,40})")


def stored_request(
    given: dict,
    origins: tuple[str, ...],
    read_file: Callable[[str], bytes | None],
    trained_tar: str | None = None,
) -> Request:
    """The engine Request of a checked input. `origins` are this server's (its public URL, the
    creating request's); `read_file(id)` reads one of its uploads; `trained_tar` is a trained
    version's weights in this server's files."""
    values = {k: v for k, v in given.items() if k in REQUEST_FIELDS or k in READ_INTO_FIELDS}
    for name in IMAGE_INPUTS:
        if name in values:
            values[name] = _source(values[name], name, origins, read_file)
    # the `loras` string, a1111's tags, controlnet_N's units: as the boundary read them
    values = with_image_prompt(with_controls(with_loras(values)))
    return Request(**values, trained_tar=trained_tar)


def with_own_files(
    request: Request, origins: tuple[str, ...], read_file: Callable[[str], bytes | None]
) -> Request:
    """The Request the boundary checked, its images that are this server's uploads read from
    the store instead of fetched over HTTP."""
    own: dict = {}
    for name in ("image", "mask"):
        read = _own_source(getattr(request, name), origins, read_file)
        if read is not None:
            own[name] = read
    units = [(unit, _own_source(unit.image, origins, read_file)) for unit in request.controls]
    prompts = [
        (image, _own_source(image, origins, read_file)) for image in request.ip_adapter_images
    ]
    if any(read is not None for _, read in prompts):
        own["ip_adapter_images"] = tuple(image if read is None else read for image, read in prompts)
    if any(read is not None for _, read in units):
        own["controls"] = tuple(
            unit if read is None else replace(unit, image=read) for unit, read in units
        )
    return replace(request, **own) if own else request


def _own_source(source, origins: tuple[str, ...], read_file) -> ImageSource | None:
    """`source` read from the store when it is one of this server's uploads, else None."""
    if not (isinstance(source, ImageSource) and source.url is not None):
        return None
    file_id = own_file_id(source.url, origins)
    if file_id is None:
        return None
    return replace(source, url=None, read=_reader(file_id, source.name, read_file))


def _source(text: str, name: str, origins, read_file) -> ImageSource:
    text = text.strip()
    if text[:5].lower() == "data:":
        return ImageSource(name, data=data_uri_bytes(text, name))
    file_id = own_file_id(text, origins)
    if file_id is None:
        return ImageSource(name, url=text)
    return ImageSource(name, read=_reader(file_id, name, read_file))


def _reader(file_id: str, name: str, read_file) -> Callable[[], bytes]:
    def read() -> bytes:
        data = read_file(file_id)
        if data is None:
            raise InputError(
                "{field:name}: the file " + file_id + " is not on this server (expired or never "
                "uploaded); upload it again",
                name,
                values={},
            )
        return data

    return read


def own_file_id(url: str, origins: tuple[str, ...]) -> str | None:
    """The file id when `url` is one of this server's /v1/files/<id> URLs."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all (an unclosed [ bracket): the fetch names the input
        return None
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    match = _FILE_PATH.fullmatch(parts.path)
    if match and origin in {o.lower().rstrip("/") for o in origins}:
        return match.group(1)
    return None
