"""A prediction's `input`: checked against the predictor's schema when it is created, turned
into an engine Request (images fetched and decoded) when the engine prepares it.

The schema check is Cog's (types, bounds, choices, no unknown inputs) plus what the Replicate
guide's JavaScript sends: a numeric string such as "0.8" for a number becomes that number and
is then bound-checked like one, and null means "not given". What the model itself refuses (a
size not a multiple of 8, a stage with no step) fails the prediction instead, as on Replicate.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from sdxl.api.caps import CAPPED_NUMBERS
from sdxl.config import COG_INPUTS, Caps
from sdxl.core.images import decode_image
from sdxl.core.request import Request
from sdxl.errors import InputError
from sdxl.net import http_get
from sdxl.trained.fetch import FetchSettings

FILE_INPUTS = ("image", "mask")
MAX_IMAGE_BYTES = 64 << 20
_INT = re.compile(r"[+-]?\d{1,19}")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")
_FILE_PATH = re.compile(r"/v1/files/([a-z0-9]{1,40})")


@dataclass(frozen=True)
class Invalid:
    """One input that breaks the schema (its value is never echoed: it may be a secret)."""

    field: str
    message: str


def normalize(raw: object, kinds: dict[str, str], caps: Caps) -> tuple[dict, list[Invalid]]:
    """(the input with numeric strings made numbers and nulls dropped, what is invalid)."""
    if not isinstance(raw, dict):
        return {}, [Invalid("input", "must be a JSON object of the model's inputs")]
    clean: dict = {}
    problems: list[Invalid] = []
    for name, value in raw.items():
        kind = kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            known = ", ".join(kinds)
            problems.append(Invalid(str(name)[:60], f"is not an input of this model ({known})"))
            continue
        if value is None:
            continue
        value, why = _coerce(name, value, kind)
        if why is None:
            why = _check(name, value, kind, caps)
        if why is not None:
            problems.append(Invalid(name, why))
        else:
            clean[name] = value
    return clean, problems


def _coerce(name: str, value, kind: str):
    if kind == "integer":
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return value, "must be an integer"
    elif kind == "number":
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, "must be a number"
        if not math.isfinite(value):
            return value, "must be a finite number"
    elif kind == "boolean":
        if not isinstance(value, bool):
            return value, "must be true or false"
    elif not isinstance(value, str):
        return value, "must be a string"
    elif kind == "uri":
        return value, _uri_problem(value)
    return value, None


def _check(name: str, value, kind: str, caps: Caps) -> str | None:
    spec = COG_INPUTS[name]
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of: {', '.join(map(str, spec.choices))}"
    if spec.ge is not None and value < spec.ge:
        return f"must be greater than or equal to {spec.ge:g}"
    if spec.le is not None and value > spec.le:
        return f"must be less than or equal to {spec.le:g}"
    cap_name = CAPPED_NUMBERS.get(name)
    if cap_name is not None and value > getattr(caps, cap_name):
        variable = Caps.VARIABLES[cap_name]
        return f"is over this server's limit of {getattr(caps, cap_name)} ({variable})"
    if kind == "string" and len(value) > caps.max_prompt_chars:  # data URIs: the body limit
        return f"has {len(value)} characters; the limit is {caps.max_prompt_chars}"
    return None


def _uri_problem(value: str) -> str | None:
    lowered = value[:8].lower()
    if lowered.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma:
            return "is not a valid data URI (no comma before the data)"
        if header.lower().endswith(";base64"):
            try:
                base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                return "is not a valid data URI (bad base64)"
        return None
    if lowered.startswith(("http://", "https://")):
        return None
    return "must be an http(s) URL, a data URI or a file uploaded to /v1/files"


# ---- at preparation: the engine's thread, off the GPU lock ---------------------------------
@dataclass(frozen=True)
class Sources:
    """Where file inputs are read: this server's uploads (never fetched over HTTP) and, for
    other URLs, the network within the download settings (sdxl.trained.fetch)."""

    origins: tuple[str, ...]  # this server's origins: SDXL_PUBLIC_URL, the creating request's
    read_file: Callable[[str], bytes | None]  # file id -> its bytes (the store)
    fetch: FetchSettings

    def limits(self, check) -> http_get.Limits:
        s = self.fetch
        return http_get.Limits(
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            deadline=time.monotonic() + min(s.deadline, 300.0),
            max_redirects=s.max_redirects,
            public_only=s.public_only,
            check=check,
        )


def request_for(values: dict, sources: Sources, check=None) -> Request:
    """The engine Request for a normalized input; images decoded. Raises InputError."""
    values = dict(values)
    for name in FILE_INPUTS:
        if name in values:
            data = _file_bytes(values[name], name, sources, check)
            values[name] = decode_image(data, name)
    return Request(**values)


def own_file_id(url: str, origins: tuple[str, ...]) -> str | None:
    """The file id when `url` is one of this server's /v1/files/<id> URLs."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    match = _FILE_PATH.fullmatch(parts.path)
    if match and origin in {o.lower().rstrip("/") for o in origins}:
        return match.group(1)
    return None


def _file_bytes(uri: str, name: str, sources: Sources, check) -> bytes:
    if uri[:5].lower() == "data:":
        header, _, payload = uri.partition(",")
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload)
        return unquote_to_bytes(payload)
    file_id = own_file_id(uri, sources.origins)
    if file_id is not None:
        data = sources.read_file(file_id)
        if data is None:
            raise InputError(
                f"{name}: the file {file_id} is not on this server (expired or never "
                "uploaded); upload it again",
                name,
            )
        return data

    def fail(why: str) -> InputError:
        return InputError(f"{name}: could not fetch the image: {why}", name)

    data, _type = http_get.get_bytes(uri, sources.limits(check), MAX_IMAGE_BYTES, fail)
    return data
