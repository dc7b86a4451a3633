"""Named presets that rewrite a request: style templates and SDXL's trained aspect ratios."""

from __future__ import annotations

import dataclasses

from sdxl.config import ASPECT_RATIOS, STYLES
from sdxl.inputs.request import Request


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def apply_presets(req: Request) -> Request:
    """The request with its style and aspect ratio applied (a checked request goes in).

    A style wraps the prompt in its template and puts its negative prompt before the user's.
    An aspect ratio sets width and height, unless an input image decides the size.
    """
    changes: dict = {}
    if req.aspect_ratio is not None and req.image is None:
        changes["width"], changes["height"] = ASPECT_RATIOS[req.aspect_ratio]
    if req.style_selected is not None:
        style = STYLES[req.style_selected]
        changes["prompt"] = style["prompt"].replace("{prompt}", req.prompt)
        changes["negative_prompt"] = _join(style["negative_prompt"], req.negative_prompt)
        if req.prompt_2 is not None:
            changes["prompt_2"] = style["prompt"].replace("{prompt}", req.prompt_2)
        if req.negative_prompt_2 is not None:
            changes["negative_prompt_2"] = _join(style["negative_prompt"], req.negative_prompt_2)
    return dataclasses.replace(req, **changes) if changes else req
