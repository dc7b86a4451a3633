"""AUTOMATIC1111's sampler and schedule names (`sdxl.inputs.a1111_samplers`): each runnable pair
builds the diffusers class it names, with sigmas equal to A1111's own formulas (written out
here from A1111 1.10's `sd_schedulers.py` and k-diffusion); pairs that cannot run are refused
with the choices; the internal scheduler names stay off Replicate's surface; DPM++ SDE's noise
is seeded per image; and a few samplers' pixels equal diffusers' own pipeline's."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support.helpers import assert_same_image, generator, pixels, with_scheduler

from sdxl.builders.tiny import SDXL_SCHEDULER_CONFIG as CONFIG
from sdxl.config import SCHEDULERS
from sdxl.errors import InputError
from sdxl.generate.schedulers import make_scheduler, plan_steps
from sdxl.inputs import a1111_samplers as a1111
from sdxl.inputs.request import Request
from sdxl.inputs.scheduler_table import SCHEDULER_TABLE, SchedulerSpec

# What each A1111 sampler must run, written out apart from the table: class and options.
EXPECTED = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint", "solver_order": 2},
    ),
    "DPM++ 2M SDE Heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "solver_order": 2},
    ),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "solver_order": 3, "timestep_spacing": "linspace"},
    ),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}
# A1111's automatic schedule per sampler (its options' "scheduler", else uniform).
AUTOMATIC = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM2": "karras", "DPM2 a": "karras"}
AUTOMATIC |= {"DPM++ 2M SDE": "exponential", "DPM++ 2M SDE Heun": "exponential"}
FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
STEPS = (20, 50)  # divide 1000: A1111's simple and ddim grids are then exact (50: slow tier)


def built(sampler: str, schedule: str = "automatic"):
    found = a1111.resolve(sampler, schedule)
    return make_scheduler(found.scheduler, CONFIG, found.timestep_spacing)


def test_every_runnable_sampler_builds_the_class_and_options_it_names():
    names = [s.name for s in a1111.runnable_samplers()]
    assert names == list(EXPECTED)  # A1111's order; torchsde and scipy are installed
    for name, (cls, options) in EXPECTED.items():
        scheduler = built(name)
        assert type(scheduler).__name__ == cls, name
        assert {k: scheduler.config[k] for k in options} == options, name
        schedule = AUTOMATIC.get(name)
        flags = {f: scheduler.config.get(f, False) for f in FLAGS if f in scheduler.config}
        wanted = {f: f == f"use_{schedule}_sigmas" for f in flags}
        assert flags == wanted, name


def test_sigma_flags_in_the_table_are_the_classes_own():
    """diffusers' from_config ignores an option a class lacks: every option must be real."""
    import diffusers

    for name, spec in SCHEDULER_TABLE.items():
        params = inspect.signature(getattr(diffusers, spec.class_name).__init__).parameters
        assert set(spec.options) <= set(params), name
        assert all(f"use_{s}_sigmas" in params for s in spec.sigma_schedules), name
    for name in ("K_EULER_ANCESTRAL", "DDIM", "PNDM", "LCM", "TCD"):
        params = inspect.signature(getattr(diffusers, SCHEDULER_TABLE[name].class_name).__init__)
        assert not any(f in params.parameters for f in FLAGS)  # so none may be offered


def test_make_scheduler_refuses_an_option_diffusers_would_ignore(monkeypatch):
    spec = SchedulerSpec("EulerAncestralDiscreteScheduler", {"use_karras_sigmas": True})
    monkeypatch.setitem(SCHEDULER_TABLE, "BROKEN", spec)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        make_scheduler("BROKEN", CONFIG)


# A1111's schedules over the model's sigmas (k-diffusion's DiscreteSchedule).
def _model_sigmas() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1 - betas)
    return np.sqrt((1 - alphas) / alphas)


SIGMAS = _model_sigmas()


def _t_to_sigma(t: np.ndarray) -> np.ndarray:
    low = np.floor(t).astype(int)
    high = np.minimum(low + 1, 999)
    w = t - low
    return np.exp((1 - w) * np.log(SIGMAS[low]) + w * np.log(SIGMAS[high]))


def a1111_sigmas(schedule: str, n: int) -> np.ndarray:
    smin, smax = SIGMAS[0], SIGMAS[-1]
    if schedule in ("uniform", "normal"):
        sigmas = _t_to_sigma(np.linspace(999, 0, n))
    elif schedule == "sgm_uniform":
        sigmas = _t_to_sigma(np.linspace(999, 0, n + 1)[:-1])
    elif schedule == "simple":
        sigmas = np.array([SIGMAS[-(1 + int(x * 1000 / n))] for x in range(n)])
    elif schedule == "ddim":
        sigmas = SIGMAS[1 :: max(1000 // n, 1)][::-1]
    elif schedule == "karras":
        ramp = np.linspace(0, 1, n)
        sigmas = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    elif schedule in ("exponential", "polyexponential"):  # polyexponential's rho 1
        sigmas = np.exp(np.linspace(math.log(smax), math.log(smin), n))
    elif schedule == "beta":
        from scipy import stats

        sigmas = smin + stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (smax - smin)
    return np.append(sigmas, 0.0)


# Max |log sigma| difference allowed: A1111 interpolates log-linearly between training
# timesteps, diffusers linearly or at integer timesteps (sgm_uniform: within one timestep).
CLOSE = {"sgm_uniform": 0.03}


def _distinct_sigmas(scheduler, n: int) -> np.ndarray:
    scheduler.set_timesteps(n)
    sigmas = torch.unique_consecutive(scheduler.sigmas.double()).numpy()
    return np.append(sigmas[sigmas > 0], 0.0)  # second-order classes repeat, KDPM2 pads zeros


def _sigma_pairs():
    for sampler in a1111.runnable_samplers():
        if sampler.family in ("timestep", "own"):
            continue
        for schedule in a1111.schedules_for(sampler):
            yield sampler.name, schedule


@pytest.mark.parametrize("n", [STEPS[0], pytest.param(STEPS[1], marks=pytest.mark.slow)])
@pytest.mark.parametrize(("sampler", "schedule"), list(_sigma_pairs()))
def test_each_schedule_gives_a1111s_sigmas(sampler, schedule, n):
    name = AUTOMATIC.get(sampler, "uniform") if schedule == "automatic" else schedule
    got = _distinct_sigmas(built(sampler, schedule), n)
    want = a1111_sigmas(name, n)
    assert got.shape == want.shape, (sampler, schedule, n)
    diff = np.abs(np.log(got[:-1]) - np.log(want[:-1])).max()
    assert diff < CLOSE.get(name, 0.01), (sampler, schedule, n, diff)


def test_timestep_samplers_ignore_the_schedule_and_few_step_ones_take_automatic_only():
    for sampler in ("DDIM", "PLMS", "UniPC"):
        karras, automatic = a1111.resolve(sampler, "karras"), a1111.resolve(sampler)
        assert (karras.scheduler, karras.timestep_spacing) == (
            automatic.scheduler,
            automatic.timestep_spacing,
        )
    for sampler in ("LCM", "TCD"):
        with pytest.raises(InputError, match="choose one of: automatic$"):
            a1111.resolve(sampler, "karras")


@pytest.mark.parametrize(
    ("sampler", "schedule", "field", "listed"),
    [
        ("DPM adaptive", "automatic", "sampler_name", "DPM++ 2M, DPM++ SDE"),
        ("DPM++ 3M SDE", "automatic", "sampler_name", "Euler a, Euler"),
        ("DPM++ 2S a", "automatic", "sampler_name", "UniPC, LCM, TCD"),
        ("no such sampler", "automatic", "sampler_name", "DDIM, PLMS"),
        ("Euler a", "karras", "scheduler", "automatic, uniform, sgm_uniform, simple, normal, ddim"),
        ("DPM++ 2M", "uniform", "scheduler", "automatic, karras, exponential"),
        ("DPM++ 2M SDE", "ddim", "scheduler", "sgm_uniform, simple, beta"),
        ("Euler", "kl_optimal", "scheduler", "normal, ddim, beta"),
        ("Euler", "align_your_steps", "scheduler", "automatic, uniform, karras"),
    ],
)
def test_a_pair_that_cannot_run_is_refused_with_the_choices(sampler, schedule, field, listed):
    with pytest.raises(InputError) as raised:
        a1111.resolve(sampler, schedule)
    assert raised.value.field == field and listed in str(raised.value)


def test_legacy_names_labels_and_aliases():
    assert a1111.resolve("DPM++ 2M Karras").scheduler == "KarrasDPM"
    assert a1111.resolve("DPM++ 2M SDE Karras").scheduler == "DPMPP_2M_SDE+karras"
    assert a1111.resolve("Euler", "SGMUniform").timestep_spacing == "trailing"
    assert a1111.resolve("k_dpmpp_sde", "Exponential").scheduler == "DPMPP_SDE+exponential"
    assert a1111.resolve("DPM++ 2M", "automatic").schedule == "Automatic"


def test_internal_names_stay_off_replicates_surface():
    assert tuple(list(SCHEDULER_TABLE)[: len(SCHEDULERS)]) == SCHEDULERS
    assert SCHEDULERS == (
        "DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "K_EULER_ANCESTRAL",
        "K_EULER", "PNDM", "LCM", "TCD",
    )  # fmt: skip
    schema = json.loads(Path(".cog/openapi_schema.json").read_text())
    assert tuple(schema["components"]["schemas"]["scheduler"]["enum"]) == SCHEDULERS


def _plan(name, spacing, **args):
    base = {"steps": 20, "spacing": spacing, "strength": None, "refine": "no_refiner"}
    base |= {"high_noise_frac": 0.8, "refine_steps": None, "refine_strength": 0.3}
    return plan_steps(name, CONFIG, CONFIG, **{**base, **args})


@pytest.mark.parametrize("sampler", [s.name for s in a1111.runnable_samplers()])
def test_every_sampler_plans_every_mode(sampler):
    for schedule in a1111.schedules_for(a1111.find_sampler(sampler))[:2]:
        found = a1111.resolve(sampler, schedule)
        name, spacing = found.scheduler, found.timestep_spacing
        assert _plan(name, spacing).base_steps >= 20
        assert _plan(name, spacing, strength=0.6).base_steps >= 12
        assert _plan(name, spacing, refine="expert_ensemble_refiner").refiner_steps >= 1
        plan = _plan(name, spacing, refine="base_image_refiner", refine_steps=5)
        assert plan.refiner_steps == len(plan.refiner_calls)


def test_a_second_order_refiner_counts_its_unet_passes():
    """HeunDiscrete: 5 refiner steps are 9 UNet passes, as base_steps counts passes."""
    plan = _plan("HeunDiscrete", None, steps=4, refine="base_image_refiner", refine_steps=5)
    assert plan.base_steps == 7 and plan.refiner_steps == 9 == len(plan.refiner_calls)


# The engine on the tiny model.
def run(engine, **kwargs):
    args = {"prompt": "a photo of a cat", "width": 256, "height": 256, "seed": 7}
    args |= {"num_inference_steps": 4, "apply_watermark": False}
    return engine.run(Request(**{**args, **kwargs})).images


@pytest.mark.parametrize(
    ("sampler", "refine"),
    [
        ("DPM++ SDE", "no_refiner"),
        # the refiner continues the same trees (about 6 s each)
        pytest.param("DPM++ SDE", "expert_ensemble_refiner", marks=pytest.mark.slow),
        pytest.param("DPM++ SDE", "base_image_refiner", marks=pytest.mark.slow),
        ("DPM++ 2M SDE", "no_refiner"),
    ],
)
def test_sde_samplers_are_reproducible_and_per_image(engine, sampler, refine):
    found = a1111.resolve(sampler)
    args = {"scheduler": found.scheduler, "timestep_spacing": found.timestep_spacing}
    args |= {"refine": refine, "refine_steps": 2}
    first = run(engine, num_outputs=2, seed=5, **args)
    again = run(engine, num_outputs=2, seed=5, **args)
    (alone,) = run(engine, seed=6, **args)
    assert [pixels(i).tolist() for i in first] == [pixels(i).tolist() for i in again]
    assert_same_image(first[1], alone, tolerance=2)  # image 1 is seed 6's (batched UNet)
    assert np.abs(pixels(first[0]) - pixels(first[1])).max() > 10, "batch images are identical"


@pytest.mark.parametrize(
    ("sampler", "schedule", "cls", "options"),
    [
        ("DPM++ SDE", "automatic", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
        ("DPM2", "automatic", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
        (
            "DPM++ 2M SDE",
            "automatic",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True},
        ),
        ("LMS", "uniform", "LMSDiscreteScheduler", {}),
        ("Euler a", "sgm_uniform", "EulerAncestralDiscreteScheduler", {}),
    ],
)
def test_pixels_equal_diffusers_own_pipeline(engine, reference, sampler, schedule, cls, options):
    import diffusers

    found = a1111.resolve(sampler, schedule)
    spacing = {"uniform": "linspace", "sgm_uniform": "trailing"}.get(schedule, "linspace")
    if cls == "DPMSolverMultistepScheduler":
        spacing = "leading"  # the config's: this class's range does not depend on it
    extra = {"noise_sampler_seed": [7]} if cls == "DPMSolverSDEScheduler" else {}
    base, _ = reference
    scheduler = getattr(diffusers, cls).from_config(
        base.scheduler.config, timestep_spacing=spacing, **options, **extra
    )
    expected = with_scheduler(base, scheduler)(
        prompt="a photo of a cat",
        width=256,
        height=256,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=generator(7),
    ).images[0]
    (got,) = run(engine, scheduler=found.scheduler, timestep_spacing=found.timestep_spacing)
    assert_same_image(got, expected)
