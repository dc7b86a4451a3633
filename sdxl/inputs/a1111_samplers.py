"""AUTOMATIC1111's sampler and schedule names (1.10), and what each (sampler, schedule) pair runs
here: the engine's scheduler name (`sdxl.inputs.scheduler_table`, internal names included) and
its timestep spacing. Pure data, no torch.

A1111 lists its samplers with an "automatic" schedule each (its options' "scheduler", else the
model's uniform sigmas). diffusers' classes reach A1111's sigmas in three ways (measured against
A1111's definitions; docs/apis.md has the tables):

- k-diffusion ports (Euler, Heun, LMS, DPM2, DPM2 a, DPM++ SDE): uniform/normal = "linspace",
  sgm_uniform/simple = "trailing", ddim = "leading" (the SDXL config's, steps_offset 1), and
  karras/exponential/polyexponential/beta = the use_*_sigmas flag over "linspace" (with the
  config's "leading" the largest sigma would be 11.03, not 14.61).
- Euler a: the spacings only (EulerAncestralDiscreteScheduler has no sigma flags).
- DPMSolverMultistep (DPM++ 2M and its SDE forms): sgm_uniform = "linspace", simple =
  "trailing", karras/exponential/polyexponential/beta = the flag; uniform, normal and ddim have
  no equivalent there.

DDIM, PLMS and UniPC ignore the schedule, as A1111 does; LCM and TCD run their own timesteps.
A name this server cannot run is refused with the names it can (A1111 would run DPM++ 2M)."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

from sdxl.errors import field_error
from sdxl.inputs.scheduler_table import SCHEDULER_TABLE

_KDIFF, _ANCESTRAL, _MULTISTEP, _TIMESTEP, _OWN = "k", "ancestral", "multistep", "timestep", "own"


@dataclass(frozen=True)
class Sampler:
    name: str
    engine: str | None  # the scheduler table's name; None: cannot run here (see `why`)
    aliases: tuple[str, ...]
    options: dict  # A1111's options, as GET /sdapi/v1/samplers shows them
    family: str  # how schedules map onto its class (the module docstring)
    spacing: str | None = None  # timestep samplers: the spacing they always use
    why: str = ""

    def automatic(self) -> str:
        return self.options.get("scheduler", "uniform")


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


_KARRAS = {"scheduler": "karras"}
_EXP_SDE = {"scheduler": "exponential", "brownian_noise": True}
_SECOND = {"second_order": True}
_NO_DIFFUSERS = "diffusers has no scheduler for it"

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistep", ("k_dpmpp_2m",), _KARRAS, _MULTISTEP),
    Sampler(
        "DPM++ SDE",
        "DPMPP_SDE",
        ("k_dpmpp_sde",),
        {**_KARRAS, **_SECOND, "brownian_noise": True},
        _KDIFF,
    ),
    Sampler("DPM++ 2M SDE", "DPMPP_2M_SDE", ("k_dpmpp_2m_sde",), _EXP_SDE, _MULTISTEP),
    Sampler(
        "DPM++ 2M SDE Heun",
        "DPMPP_2M_SDE_HEUN",
        ("k_dpmpp_2m_sde_heun",),
        {**_EXP_SDE, "solver_type": "heun"},
        _MULTISTEP,
    ),
    Sampler(
        "DPM++ 2S a",
        None,
        ("k_dpmpp_2s_a",),
        {**_KARRAS, "uses_ensd": True, **_SECOND},
        _KDIFF,
        why="diffusers has no ancestral single-step DPM-Solver++",
    ),
    Sampler(
        "DPM++ 3M SDE",
        None,
        ("k_dpmpp_3m_sde",),
        {**_EXP_SDE, "discard_next_to_last_sigma": True},
        _MULTISTEP,
        why="diffusers' third-order SDE update is not k-diffusion's (the sign of one term)",
    ),
    Sampler("Euler a", "K_EULER_ANCESTRAL", ("k_euler_a", "k_euler_ancestral"), {}, _ANCESTRAL),
    Sampler("Euler", "K_EULER", ("k_euler",), {}, _KDIFF),
    Sampler("LMS", "K_LMS", ("k_lms",), {}, _KDIFF),
    Sampler("Heun", "HeunDiscrete", ("k_heun",), _SECOND, _KDIFF),
    Sampler(
        "DPM2",
        "K_DPM_2",
        ("k_dpm_2",),
        {**_KARRAS, "discard_next_to_last_sigma": True, **_SECOND},
        _KDIFF,
    ),
    Sampler(
        "DPM2 a",
        "K_DPM_2_ANCESTRAL",
        ("k_dpm_2_a",),
        {**_KARRAS, "discard_next_to_last_sigma": True, "uses_ensd": True, **_SECOND},
        _KDIFF,
    ),
    Sampler("DPM fast", None, ("k_dpm_fast",), {"uses_ensd": True}, _KDIFF, why=_NO_DIFFUSERS),
    Sampler("DPM adaptive", None, ("k_dpm_ad",), {"uses_ensd": True}, _KDIFF, why=_NO_DIFFUSERS),
    Sampler("Restart", None, ("restart",), _KARRAS, _KDIFF, why=_NO_DIFFUSERS),
    Sampler("DDIM", "DDIM", ("ddim",), {}, _TIMESTEP),
    Sampler("DDIM CFG++", None, ("ddim_cfgpp",), {}, _TIMESTEP, why="CFG++ changes the guidance"),
    Sampler("PLMS", "PNDM", ("plms",), {}, _TIMESTEP),
    Sampler("UniPC", "UNIPC", ("unipc",), {}, _TIMESTEP, spacing="linspace"),
    Sampler("LCM", "LCM", ("k_lcm",), {}, _OWN),
    Sampler("TCD", "TCD", ("tcd",), {}, _OWN),  # this server's own addition
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True),
    Schedule("karras", "Karras", default_rho=7.0),
    Schedule("exponential", "Exponential"),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
    Schedule("simple", "Simple", need_inner_model=True),
    Schedule("normal", "Normal", need_inner_model=True),
    Schedule("ddim", "DDIM", need_inner_model=True),
    Schedule("beta", "Beta", need_inner_model=True, requires=("scipy",)),
)

_SPACINGS = {"uniform": "linspace", "normal": "linspace", "sgm_uniform": "trailing"}
_SPACINGS |= {"simple": "trailing", "ddim": "leading"}
_FLAGS = {"karras": "karras", "exponential": "exponential", "polyexponential": "exponential"}
_FLAGS |= {"beta": "beta"}
# schedule -> (timestep spacing, sigma flag); a schedule missing from a family is refused.
FAMILIES: dict[str, dict[str, tuple[str | None, str | None]]] = {
    _KDIFF: {**{k: (v, None) for k, v in _SPACINGS.items()}}
    | {k: ("linspace", v) for k, v in _FLAGS.items()},
    _ANCESTRAL: {k: (v, None) for k, v in _SPACINGS.items()},
    _MULTISTEP: {"sgm_uniform": ("linspace", None), "simple": ("trailing", None)}
    | {k: (None, v) for k, v in _FLAGS.items()},
}


@dataclass(frozen=True)
class Resolved:
    scheduler: str  # the engine's scheduler name
    timestep_spacing: str | None  # None: the model config's own
    sampler: str  # A1111's label for the infotext
    schedule: str


@functools.cache
def _importable(modules: tuple[str, ...]) -> bool:
    """Whether these modules are installed (looked up once per process)."""
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _engine_requires(engine: str | None) -> tuple[str, ...]:
    return () if engine is None else SCHEDULER_TABLE[engine].requires


def runnable_samplers() -> list[Sampler]:
    """The samplers this server runs, in A1111's order (GET /sdapi/v1/samplers)."""
    return [s for s in SAMPLERS if s.engine and _importable(_engine_requires(s.engine))]


def offered_schedules() -> list[Schedule]:
    """The schedules some sampler runs here (GET /sdapi/v1/schedulers)."""
    return [s for s in SCHEDULES if _importable(s.requires)]


def _pair(sampler: Sampler, schedule: str) -> tuple[str, str | None] | None:
    """(engine scheduler, spacing) for a pair, or None where it cannot run here."""
    if sampler.family == _TIMESTEP:
        return sampler.engine, sampler.spacing
    if sampler.family == _OWN:
        return (sampler.engine, None) if schedule == "automatic" else None
    key = sampler.automatic() if schedule == "automatic" else schedule
    found = FAMILIES[sampler.family].get(key)
    if found is None:
        return None
    spacing, sigmas = found
    engine = sampler.engine
    if sigmas is not None:
        engine = (
            "KarrasDPM"
            if (engine, sigmas) == ("DPMSolverMultistep", "karras")
            else f"{engine}+{sigmas}"
        )
    if engine not in SCHEDULER_TABLE or not _importable(SCHEDULER_TABLE[engine].requires):
        return None
    return engine, spacing


def schedules_for(sampler: Sampler) -> list[str]:
    """The schedule names `sampler` runs with here."""
    return [s.name for s in offered_schedules() if _pair(sampler, s.name) is not None]


def find_sampler(name: str) -> Sampler | None:
    """A1111's sampler by its name or an alias (in any case)."""
    lowered = name.lower()
    for sampler in SAMPLERS:
        if lowered in (sampler.name.lower(), *sampler.aliases):
            return sampler
    return None


def _schedule(name: str) -> Schedule | None:
    for schedule in SCHEDULES:
        if name in (schedule.name, schedule.label, *schedule.aliases):
            return schedule
    return None


def _split_legacy(name: str, schedule: str) -> tuple[str, str]:
    """ "DPM++ 2M Karras" names its schedule, as A1111's pre-1.9 labels did."""
    if find_sampler(name) is not None:
        return name, schedule
    for entry in SCHEDULES[1:]:
        for key in (entry.label, entry.name, *entry.aliases):
            if name.endswith(" " + key) and find_sampler(name[: -len(key) - 1]) is not None:
                return name[: -len(key) - 1], entry.name
    return name, schedule


def resolve(sampler_name: str, schedule_name: str = "automatic") -> Resolved:
    """What A1111's (sampler, schedule) runs here; an InputError (422) names the choices."""
    name, schedule_name = _split_legacy(sampler_name, schedule_name)
    sampler = find_sampler(name)
    runnable = runnable_samplers()
    if sampler not in runnable:
        names = ", ".join(s.name for s in runnable)
        why = f" ({sampler.why})" if sampler is not None and sampler.why else ""
        raise field_error(
            "{field} cannot run here{why}; choose one of: {choices}",
            "sampler_name",
            sampler_name,
            words={"why": why, "choices": names},
        )
    schedule = _schedule(schedule_name)
    choices = schedules_for(sampler)
    pair = None if schedule is None else _pair(sampler, schedule.name)
    if pair is None or schedule.name not in choices:
        raise field_error(
            "{field} does not run with the {sampler} sampler here; choose one of: {choices}",
            "scheduler",
            schedule_name,
            words={"sampler": sampler.name, "choices": ", ".join(choices)},
        )
    engine, spacing = pair
    return Resolved(engine, spacing, sampler.name, schedule.label)
