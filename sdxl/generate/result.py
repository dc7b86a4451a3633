"""What one job returns: the images, their seeds, the plan and the safety checker's flags.

No torch here: the APIs read results without loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from sdxl.generate.schedulers import StepPlan


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
