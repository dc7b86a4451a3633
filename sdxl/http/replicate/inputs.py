"""A prediction's `input` on the Replicate API: the predictor's inputs under their own names.

Checked once, when the prediction is created (`sdxl.inputs.rules`): numbers may come as strings
("0.8", as the Replicate guide's JavaScript sends them) and null means "not given". What is
stored is the input as checked; when a replica claims the prediction it becomes an engine
Request again (images as sources: this server's uploads are read from the store, never
fetched over HTTP), and the engine checks the model's rules when it prepares the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from sdxl.config import COG_INPUTS
from sdxl.errors import InputError
from sdxl.http.wire import Wire
from sdxl.images.inputs import ImageSource, data_uri_bytes
from sdxl.inputs.request import Request
from sdxl.inputs.surface import REQUEST_FIELDS, Field, Surface

REPLICATE = Surface(fields=tuple(Field(name, name) for name in COG_INPUTS), null_is_unset=True)
WIRE = Wire(numbers_from_strings=True)  # the Replicate guide's JavaScript sends "0.8"
IMAGE_INPUTS = ("image", "mask")
_FILE_PATH = re.compile(r"/v1/files/([a-z0-9]{1,40})")


def stored_request(
    given: dict,
    origins: tuple[str, ...],
    read_file: Callable[[str], bytes | None],
    trained_tar: str | None = None,
) -> Request:
    """The engine Request of a stored (checked) input. `origins` are this server's (its public
    URL, the creating request's); `read_file(id)` reads one of its uploads; `trained_tar` is a
    trained version's weights in this server's files."""
    values = {k: v for k, v in given.items() if k in REQUEST_FIELDS}
    for name in IMAGE_INPUTS:
        if name in values:
            values[name] = _source(values[name], name, origins, read_file)
    return Request(**values, trained_tar=trained_tar)


def _source(text: str, name: str, origins, read_file) -> ImageSource:
    text = text.strip()
    if text[:5].lower() == "data:":
        return ImageSource(name, data=data_uri_bytes(text, name))
    file_id = own_file_id(text, origins)
    if file_id is None:
        return ImageSource(name, url=text)

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

    return ImageSource(name, read=read)


def own_file_id(url: str, origins: tuple[str, ...]) -> str | None:
    """The file id when `url` is one of this server's /v1/files/<id> URLs."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    match = _FILE_PATH.fullmatch(parts.path)
    if match and origin in {o.lower().rstrip("/") for o in origins}:
        return match.group(1)
    return None
