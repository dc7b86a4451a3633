"""What one job returns: the images, their seeds, the step plan it ran and the safety checker's
flags. `sdxl.generate` makes them (the plan in `sdxl.generate.schedulers`, the result in
`sdxl.generate.finish`); the APIs and `sdxl.images.outputs` read them.

No torch here: the APIs read results without loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class StepPlan:
    """How many denoising steps each stage runs, computed as diffusers will compute them.

    `base_steps` and `refiner_steps` count UNet passes (timesteps actually visited);
    `refiner_schedule` is the num_inference_steps the refiner is called with. `base_calls` and
    `refiner_calls` give, for each UNet call of the stage, the position of its timestep in the
    stage scheduler's schedule (its first occurrence, as DeepCache counts steps).
    `hires_steps` counts the hires fix's second pass (img2img at the larger size, after the
    refiner), `hires_schedule` its num_inference_steps; `total_steps` counts every stage.
    """

    base_steps: int
    refiner_steps: int = 0
    refiner_schedule: int = 0
    base_calls: tuple[int, ...] = ()
    refiner_calls: tuple[int, ...] = ()
    hires_steps: int = 0
    hires_schedule: int = 0
    hires_calls: tuple[int, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.base_steps + self.refiner_steps + self.hires_steps


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    mode: str
    plan: StepPlan
    parameters: dict = field(default_factory=dict)  # what was used, for image metadata
    nsfw: list[bool] = field(default_factory=list)  # per image: flagged by the safety checker
    # The ControlNet units' control maps, when the request asked for them (return_control_maps)
    control_maps: list[Image.Image] = field(default_factory=list)

    def metadata(self, index: int) -> dict:
        """The parameters to embed in image `index`."""
        return {**self.parameters, "seed": self.seeds[index]}
