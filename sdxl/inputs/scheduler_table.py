"""The one table of scheduler names, and the rules about steps that need no model: LCM's and
TCD's step limit, and the refiner's schedule length for `base_image_refiner`. The boundary's
check (`sdxl.inputs.rules`) and the step plan (`sdxl.generate.schedulers`, which builds the
schedulers from this table) both read them here.

Replicate's names (`sdxl.config.SCHEDULERS`) are the first entries. The others are internal:
AUTOMATIC1111's samplers (`sdxl.inputs.a1111_samplers`) set them, and no Cog or Replicate input
accepts them. `NAME+karras`, `NAME+exponential` and `NAME+beta` are NAME with that sigma schedule
(diffusers' `use_*_sigmas` flag), made only for the classes that honour the flag: diffusers'
`from_config` silently ignores a flag a class lacks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sdxl.errors import InputError


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    options: dict = field(default_factory=dict)
    # Its own timesteps (a consistency model's): timestep_spacing is ignored, and it takes at
    # most its original_inference_steps (diffusers' default, 50) steps.
    few_step: bool = False
    # The use_{name}_sigmas flags this class's __init__ has (tests check them against diffusers).
    sigma_schedules: frozenset[str] = frozenset()
    # Its noise is a Brownian tree seeded by noise_sampler_seed (one seed per image), not the
    # pipeline's generators (DPMSolverSDEScheduler's step takes none).
    brownian: bool = False
    requires: tuple[str, ...] = ()  # modules it imports when built or stepped


SIGMA_SCHEDULES = ("karras", "exponential", "beta")
_ALL = frozenset(SIGMA_SCHEDULES)
_SDE = {"algorithm_type": "sde-dpmsolver++"}

# Names as Replicate's stability-ai/sdxl spells them (config.SCHEDULERS), then internal ones.
_BASE: dict[str, SchedulerSpec] = {
    "DDIM": SchedulerSpec("DDIMScheduler"),
    "DPMSolverMultistep": SchedulerSpec("DPMSolverMultistepScheduler", sigma_schedules=_ALL),
    "HeunDiscrete": SchedulerSpec("HeunDiscreteScheduler", sigma_schedules=_ALL),
    "KarrasDPM": SchedulerSpec("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "K_EULER": SchedulerSpec("EulerDiscreteScheduler", sigma_schedules=_ALL),
    "PNDM": SchedulerSpec("PNDMScheduler"),
    "LCM": SchedulerSpec("LCMScheduler", few_step=True),
    "TCD": SchedulerSpec("TCDScheduler", few_step=True),
    # Internal: A1111's samplers that Replicate's names do not cover.
    "K_LMS": SchedulerSpec("LMSDiscreteScheduler", sigma_schedules=_ALL, requires=("scipy",)),
    "K_DPM_2": SchedulerSpec("KDPM2DiscreteScheduler", sigma_schedules=_ALL),
    "K_DPM_2_ANCESTRAL": SchedulerSpec("KDPM2AncestralDiscreteScheduler", sigma_schedules=_ALL),
    "DPMPP_SDE": SchedulerSpec(
        "DPMSolverSDEScheduler", sigma_schedules=_ALL, brownian=True, requires=("torchsde",)
    ),
    "DPMPP_2M_SDE": SchedulerSpec("DPMSolverMultistepScheduler", _SDE, sigma_schedules=_ALL),
    "DPMPP_2M_SDE_HEUN": SchedulerSpec(
        "DPMSolverMultistepScheduler", {**_SDE, "solver_type": "heun"}, sigma_schedules=_ALL
    ),
    "UNIPC": SchedulerSpec("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
}


def _with_sigmas(spec: SchedulerSpec, sigmas: str) -> SchedulerSpec:
    requires = (*spec.requires, "scipy") if sigmas == "beta" else spec.requires
    options = {**spec.options, f"use_{sigmas}_sigmas": True}
    return replace(spec, options=options, sigma_schedules=frozenset(), requires=requires)


SCHEDULER_TABLE: dict[str, SchedulerSpec] = {
    **_BASE,
    **{
        f"{name}+{sigmas}": _with_sigmas(spec, sigmas)
        for name, spec in _BASE.items()
        for sigmas in SIGMA_SCHEDULES
        if sigmas in spec.sigma_schedules
    },
}
FEW_STEP_MAX = 50  # LCMScheduler's and TCDScheduler's original_inference_steps


class StepPlanError(InputError):
    """A stage would run fewer than one step, or more than its scheduler takes."""


def check_few_step(
    name: str,
    steps: int,
    field: str,
    wanted: int | None = None,
    strength: float = 0.3,
    stage: str = "refiner",
) -> None:
    """LCM and TCD schedule at most FEW_STEP_MAX steps (diffusers raises a ValueError past
    them). `wanted`: the steps run (refine_steps, hires_steps) whose img2img schedule at
    `strength` is `steps`, in `stage`'s words."""
    if not SCHEDULER_TABLE[name].few_step or steps <= FEW_STEP_MAX:
        return
    if wanted is None:
        template = (
            "{field} is more than the {scheduler} scheduler takes: at most {limit} (its "
            "original_inference_steps); few-step schedulers run 1-8 steps"
        )
        words = {"scheduler": name, "limit": FEW_STEP_MAX}
        raise StepPlanError(template, field, steps, words=words)
    fits = [w for w in range(1, wanted) if refiner_schedule_for(w, strength) <= FEW_STEP_MAX]
    template = (
        "{field} makes the {stage} schedule {steps} steps with the {scheduler} scheduler, which "
        "takes at most {limit} (its original_inference_steps); {advice}"
    )
    advice = f"use {max(fits)} or fewer" if fits else f"raise its strength ({strength})"
    words = {"steps": steps, "scheduler": name, "limit": FEW_STEP_MAX, "advice": advice}
    words["stage"] = stage
    raise StepPlanError(template, field, wanted, words=words)


def refiner_schedule_for(wanted: int, strength: float) -> int:
    """The smallest schedule length whose img2img run at `strength` (over 0) runs `wanted`
    steps (the refiner's refine_steps, the hires fix's hires_steps)."""
    schedule = max(wanted, int(wanted / strength) - 1)
    while min(int(schedule * strength), schedule) < wanted:
        schedule += 1
    return schedule
