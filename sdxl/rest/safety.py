"""The NSFW check of `safety_filter`. Hook: the real safety checker goes here."""

from __future__ import annotations

from PIL import Image


def check_images(images: list[Image.Image], enabled: bool) -> tuple[list[Image.Image], list[bool]]:
    """(images, flags): flagged images are to be returned black when the filter is enabled.

    NOTE: this build has no safety checker yet, so nothing is ever flagged and
    `nsfw_content_detected` is all false whatever `safety_filter` says. When the engine gains
    one, run it here (only when `enabled`) and replace each flagged image with a black one of
    the same size.
    """
    return list(images), [False] * len(images)
