"""What a preparation thread does for a job's images: a URL fetched under the SSRF rules (only
here, off the GPU), then every image decoded once."""

from __future__ import annotations

import dataclasses
import time

from sdxl.images.inputs import MAX_IMAGE_BYTES, ImageInputError, ImageSource, fail, load
from sdxl.inputs.request import Request
from sdxl.net import http_get
from sdxl.settings import FetchSettings

URL_DEADLINE_S = 300.0  # an image URL is fetched within this, whatever SDXL_FETCH_DEADLINE says


def with_images(req: Request, fetch: FetchSettings, check=None) -> Request:
    """`req` with its image and mask decoded (fetched first when they are URLs); `check` may
    raise to stop a download (a cancelled job)."""

    def fetched(source: ImageSource) -> bytes:
        def failed(why: str) -> ImageInputError:
            return fail(source.name, f"could not be fetched: {why}")

        limits = http_get.Limits.of(fetch, check, time.monotonic() + URL_DEADLINE_S)
        data, _type = http_get.get_bytes(source.url, limits, MAX_IMAGE_BYTES, failed)
        return data

    loaded: dict = {
        name: load(source, fetched)
        for name in ("image", "mask")
        if isinstance(source := getattr(req, name), ImageSource)
    }
    if any(isinstance(unit.image, ImageSource) for unit in req.controls):
        loaded["controls"] = tuple(
            dataclasses.replace(unit, image=load(unit.image, fetched))
            if isinstance(unit.image, ImageSource)
            else unit
            for unit in req.controls
        )
    if any(isinstance(image, ImageSource) for image in req.ip_adapter_images):
        loaded["ip_adapter_images"] = tuple(
            load(image, fetched) if isinstance(image, ImageSource) else image
            for image in req.ip_adapter_images
        )
    return dataclasses.replace(req, **loaded) if loaded else req
