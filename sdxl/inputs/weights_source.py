"""Where `replicate_weights` may come from, checked once at the boundary (`sdxl.inputs.rules`):
an http(s) URL, fetched when the job is prepared (`sdxl.adapters.fetch`), or a file on this
machine (a path or a file:// URL) inside the folders the surface allows (`sdxl.settings.
LocalFiles`: SDXL_LOCAL_WEIGHTS_DIRS; the command line adds the folder of the file its user
names). A refusal names the input, the value and the fix.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from sdxl.errors import InputError, shown
from sdxl.settings import LocalFiles

NAME = "replicate_weights"
REMOTE = ("http", "https")
HTTP_WAYS = (
    "give an https URL of the file, or, on Replicate's API, upload it with POST /v1/files (the "
    "Replicate clients do it for an open file) and give the URL it returns"
)


def scheme_of(text: str) -> str:
    """The URL scheme of `text`, lowercased ("" for a plain path)."""
    try:
        return urlsplit(text).scheme.lower()
    except ValueError:
        return "?"


def local_path(text: str) -> str | None:
    """The path a local source names (a plain path, or a file:// URL of this machine), None
    for anything else."""
    scheme = scheme_of(text)
    if scheme == "":
        return text
    if scheme != "file":
        return None
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost") or not parts.path:
        return None
    return unquote(parts.path)


def weights_source(text: str, local: LocalFiles) -> str:
    """`text` as the engine reads it: a URL as given, a local file as its absolute path.
    InputError (naming replicate_weights) when the surface may not use it."""
    value = text.strip()
    if not value:
        return value
    scheme = scheme_of(value)
    if scheme in REMOTE:
        return value
    path = local_path(value)
    if path is not None:
        return _local_file(path, value, local)
    if scheme == "file":
        raise _error(
            "{field:name}: {value} is not a file:// URL of this machine; " + HTTP_WAYS, value
        )
    if scheme == "?":
        raise _error("{field:name}: {value} is not a valid URL; " + HTTP_WAYS, value)
    if scheme == "data":
        raise _error(
            "{field:name} takes no data URI here (the value starts with data:); " + HTTP_WAYS, ""
        )
    raise _error(
        "{field:name}: {scheme}:// URLs are not supported; " + HTTP_WAYS,
        value,
        scheme=scheme,
    )


def _local_file(path: str, value: str, local: LocalFiles) -> str:
    if not local.allows(path):
        where = (
            "is outside the folders this server reads weights from (SDXL_LOCAL_WEIGHTS_DIRS)"
            if local.dirs
            else "is a file on the server, which requests over HTTP may not name"
        )
        raise _error(
            "{field:name}: {value} " + where + "; " + HTTP_WAYS + ", or ask the server's "
            "operator to allow its folder with SDXL_LOCAL_WEIGHTS_DIRS",
            value,
        )
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise _error(
            "{field:name}: {value} is not a file; give the path of a trained_model.tar (or of a "
            "LoRA .safetensors)",
            value,
        )
    return full


def _error(template: str, value: str, **words: str) -> InputError:
    return InputError(template, NAME, value, values={}, words={"value": shown(value), **words})
