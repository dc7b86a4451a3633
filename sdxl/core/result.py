"""What one job returns, and how the APIs treat images the safety checker flagged.

No torch here: the APIs read results without loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from sdxl.core.schedulers import StepPlan
from sdxl.errors import InputError


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    mode: str
    plan: StepPlan
    parameters: dict = field(default_factory=dict)  # what was used, for image metadata
    nsfw: list[bool] = field(default_factory=list)  # per image: flagged by the safety checker

    def metadata(self, index: int) -> dict:
        """The parameters to embed in image `index`."""
        return {**self.parameters, "seed": self.seeds[index]}


class AllFlaggedError(InputError):
    """Every image of a request was flagged, so a Cog prediction has nothing to return."""


def filter_flagged(
    images: list[Image.Image], flags: list[bool]
) -> tuple[list[Image.Image], list[int]]:
    """(the images not flagged, their indices); AllFlaggedError if none is left."""
    _same_length(images, flags)
    kept = [i for i, flagged in enumerate(flags) if not flagged]
    if images and not kept:
        n = len(images)
        what = "the image was" if n == 1 else f"all {n} images were"
        raise AllFlaggedError(
            f"{what} flagged by the safety checker; try another prompt or seed, "
            "or set disable_safety_checker"
        )
    return [images[i] for i in kept], kept


def blacken(images: list[Image.Image], flags: list[bool]) -> list[Image.Image]:
    """The images with each flagged one replaced by a black image of its size and mode."""
    _same_length(images, flags)
    return [Image.new(im.mode, im.size) if f else im for im, f in zip(images, flags, strict=True)]


def _same_length(images: list[Image.Image], flags: list[bool]) -> None:
    if len(images) != len(flags):
        raise ValueError(f"{len(images)} images but {len(flags)} safety flags")
