"""The one table of scheduler names, and fresh schedulers built from a pristine config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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


def make_scheduler(name: str, pristine_config: dict, timestep_spacing: str | None = None) -> Any:
    """A new scheduler of `name`, configured from `pristine_config` and nothing else.

    `timestep_spacing=None` keeps the config's own spacing (LCM and TCD have their own
    timesteps and ignore it). Options of the table win over the config (KarrasDPM always uses
    Karras sigmas, whatever the config says).
    """
    import diffusers

    spec = SCHEDULER_TABLE[name]
    overrides: dict[str, Any] = dict(spec.options)
    if timestep_spacing is not None and not spec.few_step:
        overrides["timestep_spacing"] = timestep_spacing
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(pristine_config, **overrides)


@dataclass(frozen=True)
class StepPlan:
    """How many denoising steps each stage runs, computed as diffusers will compute them.

    `base_steps` and `refiner_steps` count UNet passes (timesteps actually visited);
    `refiner_schedule` is the num_inference_steps the refiner is called with. `base_calls` and
    `refiner_calls` give, for each UNet call of the stage, the position of its timestep in the
    stage scheduler's schedule (its first occurrence, as DeepCache counts steps).
    """

    base_steps: int
    refiner_steps: int = 0
    refiner_schedule: int = 0
    base_calls: tuple[int, ...] = ()
    refiner_calls: tuple[int, ...] = ()


class StepPlanError(InputError):
    """A stage would run fewer than one step."""


def _timesteps(name: str, config: dict, spacing: str | None, steps: int):
    scheduler = make_scheduler(name, config, spacing)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps, scheduler.order


def _cutoff(config: dict, fraction: float) -> int:
    total = config["num_train_timesteps"]
    return int(round(total - fraction * total))  # noqa: RUF046 (diffusers does the same)


def plan_steps(
    name: str,
    base_config: dict,
    refiner_config: dict,
    *,
    steps: int,
    spacing: str | None,
    strength: float | None,
    refine: str,
    high_noise_frac: float,
    refine_steps: int | None,
    refine_strength: float,
) -> StepPlan:
    """Mirror diffusers' SDXL step arithmetic; raise StepPlanError before a stage runs 0 steps.

    `strength` is None for text to image, else img2img/inpaint strength.
    """
    check_few_step(name, steps, "num_inference_steps")
    schedule, order = _timesteps(name, base_config, spacing, steps)
    timesteps = schedule
    if strength is not None:
        kept = min(int(steps * strength), steps)
        timesteps = timesteps[max(steps - kept, 0) * order :]
        if len(timesteps) == 0:
            raise StepPlanError(
                "{prompt_strength} x {num_inference_steps} is below one step; raise "
                "{prompt_strength:name} or {num_inference_steps:name}",
                "prompt_strength",
                strength,
                values={"prompt_strength": strength, "num_inference_steps": steps},
            )
    if refine == "expert_ensemble_refiner":
        plan = _plan_ensemble(name, refiner_config, spacing, steps, timesteps, high_noise_frac)
        base_calls = _calls(schedule, timesteps[: plan.base_steps])
        return dataclasses.replace(plan, base_calls=base_calls)
    base_calls = _calls(schedule, timesteps)
    if refine == "base_image_refiner":
        wanted = steps if refine_steps is None else refine_steps
        refiner_steps = refiner_schedule_for(wanted, refine_strength)
        check_few_step(name, refiner_steps, "refine_steps", wanted, refine_strength)
        full, order = _timesteps(name, refiner_config, spacing, refiner_steps)
        start = max(refiner_steps - min(int(refiner_steps * refine_strength), refiner_steps), 0)
        refiner_calls = _calls(full, full[start * order :])
        return StepPlan(len(timesteps), wanted, refiner_steps, base_calls, refiner_calls)
    return StepPlan(len(timesteps), base_calls=base_calls)


def _calls(schedule, used) -> tuple[int, ...]:
    """For each timestep a stage visits, its first position in the schedule."""
    first: dict[float, int] = {}
    for position, timestep in enumerate(schedule.tolist()):
        first.setdefault(timestep, position)
    return tuple(first[timestep] for timestep in used.tolist())


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


def _plan_ensemble(name, refiner_config, spacing, steps, base_timesteps, fraction) -> StepPlan:
    cutoff = _cutoff(refiner_config, fraction)
    base = int((base_timesteps >= cutoff).sum())
    refiner_timesteps, order = _timesteps(name, refiner_config, spacing, steps)
    refiner = int((refiner_timesteps < cutoff).sum())
    if order == 2 and refiner % 2 == 0:
        refiner += 1  # diffusers ends on a complete second-order step
    calls = _calls(refiner_timesteps, refiner_timesteps[len(refiner_timesteps) - refiner :])
    if base < 1 or refiner < 1:
        stage = "base" if base < 1 else "refiner"
        raise StepPlanError(
            "with {num_inference_steps} and {high_noise_frac} the {stage} would run no step "
            "(with an input image, {prompt_strength:name} must also exceed the refiner's share "
            "of the schedule); raise {num_inference_steps:name} or move {high_noise_frac:name}",
            "num_inference_steps",
            steps,
            values={"num_inference_steps": steps, "high_noise_frac": fraction},
            words={"stage": stage},
        )
    return StepPlan(base, refiner, steps, refiner_calls=calls)


def refiner_schedule_for(wanted: int, strength: float) -> int:
    """The smallest schedule length whose img2img run at `strength` runs `wanted` steps."""
    schedule = max(wanted, int(wanted / strength) - 1)
    while min(int(schedule * strength), schedule) < wanted:
        schedule += 1
    return schedule
