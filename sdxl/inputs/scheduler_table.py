"""The one table of scheduler names, and the rules about steps that need no model: LCM's and
TCD's step limit, and the refiner's schedule length for `base_image_refiner`. The boundary's
check (`sdxl.inputs.rules`) and the step plan (`sdxl.generate.schedulers`, which builds the
schedulers from this table) both read them here."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdxl.errors import InputError


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    options: dict = field(default_factory=dict)
    # Its own timesteps (a consistency model's): timestep_spacing is ignored, and it takes at
    # most its original_inference_steps (diffusers' default, 50) steps.
    few_step: bool = False


# Names as Replicate's stability-ai/sdxl spells them.
SCHEDULER_TABLE: dict[str, SchedulerSpec] = {
    "DDIM": SchedulerSpec("DDIMScheduler"),
    "DPMSolverMultistep": SchedulerSpec("DPMSolverMultistepScheduler"),
    "HeunDiscrete": SchedulerSpec("HeunDiscreteScheduler"),
    "KarrasDPM": SchedulerSpec("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "K_EULER": SchedulerSpec("EulerDiscreteScheduler"),
    "PNDM": SchedulerSpec("PNDMScheduler"),
    "LCM": SchedulerSpec("LCMScheduler", few_step=True),
    "TCD": SchedulerSpec("TCDScheduler", few_step=True),
}
FEW_STEP_MAX = 50  # LCMScheduler's and TCDScheduler's original_inference_steps


class StepPlanError(InputError):
    """A stage would run fewer than one step, or more than its scheduler takes."""


def check_few_step(
    name: str, steps: int, field: str, wanted: int | None = None, strength: float = 0.3
) -> None:
    """LCM and TCD schedule at most FEW_STEP_MAX steps (diffusers raises a ValueError past
    them). `wanted`: the refine_steps whose refiner schedule is `steps`."""
    if not SCHEDULER_TABLE[name].few_step or steps <= FEW_STEP_MAX:
        return
    if wanted is None:
        template = (
            "{field} is more than the {scheduler} scheduler takes: at most {limit} (its "
            "original_inference_steps); few-step schedulers run 1-8 steps"
        )
        words = {"scheduler": name, "limit": FEW_STEP_MAX}
        raise StepPlanError(template, field, steps, words=words)
    fewer = max(w for w in range(1, wanted) if refiner_schedule_for(w, strength) <= FEW_STEP_MAX)
    template = (
        "{field} makes the refiner schedule {steps} steps with the {scheduler} scheduler, which "
        "takes at most {limit} (its original_inference_steps); use {fewer} or fewer"
    )
    words = {"steps": steps, "scheduler": name, "limit": FEW_STEP_MAX, "fewer": fewer}
    raise StepPlanError(template, field, wanted, words=words)


def refiner_schedule_for(wanted: int, strength: float) -> int:
    """The smallest schedule length whose img2img run at `strength` runs `wanted` steps."""
    schedule = max(wanted, int(wanted / strength) - 1)
    while min(int(schedule * strength), schedule) < wanted:
        schedule += 1
    return schedule
