"""Fresh schedulers built from a pristine config, by the table's names
(`sdxl.inputs.scheduler_table`), and the step plan: how many steps each stage runs."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

from sdxl.images.result import StepPlan
from sdxl.inputs.scheduler_table import (
    SCHEDULER_TABLE,
    StepPlanError,
    check_few_step,
    refiner_schedule_for,
)


def make_scheduler(
    name: str,
    pristine_config: dict,
    timestep_spacing: str | None = None,
    seeds: Sequence[int] | None = None,
) -> Any:
    """A new scheduler of `name`, configured from `pristine_config` and nothing else.

    `timestep_spacing=None` keeps the config's own spacing (LCM and TCD have their own
    timesteps and ignore it). Options of the table win over the config (KarrasDPM always uses
    Karras sigmas, whatever the config says). `seeds`, one per image, seed a Brownian scheduler's
    noise (DPM++ SDE), so that image i depends on seeds[i] alone; the step plan passes none.
    """
    import diffusers

    spec = SCHEDULER_TABLE[name]
    overrides: dict[str, Any] = dict(spec.options)
    if timestep_spacing is not None and not spec.few_step:
        overrides["timestep_spacing"] = timestep_spacing
    if spec.brownian and seeds is not None:
        overrides["noise_sampler_seed"] = list(seeds)
    cls = getattr(diffusers, spec.class_name)
    unknown = set(overrides) - set(inspect.signature(cls.__init__).parameters)
    if unknown:  # from_config would drop them silently and run something else
        raise ValueError(f"{spec.class_name} has no option {', '.join(sorted(unknown))}")
    return cls.from_config(pristine_config, **overrides)


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
        timesteps = _img2img(schedule, order, steps, strength)
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
        # refiner_steps counts UNet passes, as base_steps does: 2n-1 for n steps of order 2.
        passes = len(refiner_calls)
        return StepPlan(len(timesteps), passes, refiner_steps, base_calls, refiner_calls)
    return StepPlan(len(timesteps), base_calls=base_calls)


def _img2img(schedule, order: int, steps: int, strength: float):
    """The timesteps diffusers' img2img visits at `strength` (int(steps * strength) of them)."""
    kept = min(int(steps * strength), steps)
    return schedule[max(steps - kept, 0) * order :]


def plan_hires(
    plan: StepPlan,
    name: str,
    base_config: dict,
    *,
    steps: int,
    spacing: str | None,
    strength: float,
) -> StepPlan:
    """`plan` with the hires fix's second pass: base img2img at `strength` running `steps`
    steps, as A1111's hires fix counts hr_second_pass_steps (the steps run, not the schedule's
    length), with scheduler `name` (its own, or the first pass's). StepPlanError before a pass
    of no step or a schedule longer than the model's."""
    schedule_steps = hires_schedule(steps, strength, base_config["num_train_timesteps"])
    check_few_step(name, schedule_steps, "hires_steps", steps, strength, "hires fix's")
    schedule, order = _timesteps(name, base_config, spacing, schedule_steps)
    timesteps = _img2img(schedule, order, schedule_steps, strength)
    calls = _calls(schedule, timesteps)
    return dataclasses.replace(
        plan, hires_steps=len(timesteps), hires_schedule=schedule_steps, hires_calls=calls
    )


def hires_schedule(steps: int, strength: float, longest: int) -> int:
    """The num_inference_steps with which diffusers' img2img at `strength` runs `steps` steps
    (the fewest that do); at most `longest`, the model's training timesteps."""
    words = {"hires_strength": strength, "hires_steps": steps}
    if strength <= 0:
        raise StepPlanError(
            "{hires_strength} leaves the hires fix's second pass no "
            "step; raise {hires_strength:name}",
            "hires_strength",
            strength,
            values=words,
        )
    schedule = refiner_schedule_for(steps, strength)
    if schedule > longest:
        raise StepPlanError(
            "{hires_strength} needs a schedule of {schedule} steps to run {hires_steps} "
            "steps, over the model's {longest}; raise {hires_strength:name} "
            "or lower {hires_steps:name}",
            "hires_strength",
            strength,
            values=words,
            words={"schedule": schedule, "longest": longest},
        )
    return schedule


def _calls(schedule, used) -> tuple[int, ...]:
    """For each timestep a stage visits, its first position in the schedule."""
    first: dict[float, int] = {}
    for position, timestep in enumerate(schedule.tolist()):
        first.setdefault(timestep, position)
    return tuple(first[timestep] for timestep in used.tolist())


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
