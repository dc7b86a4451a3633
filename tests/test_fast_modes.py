"""Fast modes on the tiny model, each against its own reference: the few-step schedulers (LCM,
TCD) with a distilled LoRA equal diffusers' own pipelines with that LoRA loaded by diffusers, in
every mode and every LoRA key format such LoRAs ship in; `cache_interval` equals the DeepCache
package's DeepCacheSDHelper on diffusers' own pipelines (Heun's repeated timesteps included),
and leaves no trace on the shared UNets."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import start_engine
from diffusers import StableDiffusionXLImg2ImgPipeline
from support.helpers import (
    assert_same_image,
    copied,
    generator,
    pixels,
    reference_scheduler,
    smooth_image,
    with_scheduler,
)
from support.loras import kohya_lora, save_safetensors

from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

SIZE = 256
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, reference):
    """A random distilled-LoRA stand-in in each key format: kohya (SDXL-Lightning, Hyper-SD),
    diffusers' older format, and peft's (LCM-LoRA, diffusers' writer), the same update."""
    base, _ = reference
    folder = tmp_path_factory.mktemp("fast-loras")
    state, _ = kohya_lora(base.unet, rank=4, alpha=4.0, seed=11)
    save_safetensors(folder / "kohya.safetensors", state)
    names = {k.removesuffix(".lora_down.weight") for k in state if k.endswith(".lora_down.weight")}
    modules = {"lora_unet_" + n.replace(".", "_"): n for n, _ in base.unet.named_modules()}
    diffusers_old, peft = {}, {}
    for key in names:
        module = modules[key]
        down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
        diffusers_old[f"unet.{module}.lora.down.weight"] = down
        diffusers_old[f"unet.{module}.lora.up.weight"] = up
        peft[f"unet.{module}.lora_A.weight"] = down
        peft[f"unet.{module}.lora_B.weight"] = up
    save_safetensors(folder / "diffusers.safetensors", diffusers_old)
    save_safetensors(folder / "peft.safetensors", peft)
    return folder


@pytest.fixture(scope="module")
def fast_engine(tiny_weights, lora_dir):
    engine = start_engine(tiny_weights, lora_dir=lora_dir)
    yield engine
    engine.close()


def run(engine, **kwargs):
    args = {"prompt": PROMPT, "width": SIZE, "height": SIZE, "seed": 7, "apply_watermark": False}
    return engine.run(Request(**{**args, **kwargs})).images


def with_lora(pipe, path, scale: float):
    """A copy of diffusers' pipeline over a copy of its UNet, with `path` loaded by diffusers."""
    tuned = copied(pipe, unet=copy.deepcopy(pipe.unet))
    tuned.load_lora_weights(str(path), adapter_name="fast")
    tuned.set_adapters(["fast"], adapter_weights=[scale])
    return tuned


# ---- few-step schedulers ----------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["LCM", "TCD"])
@pytest.mark.parametrize("key_format", ["kohya", "diffusers", "peft"])
def test_a_few_step_lora_equals_diffusers(fast_engine, reference, lora_dir, scheduler, key_format):
    base, _ = reference
    few_step = with_scheduler(base, reference_scheduler(base, scheduler))
    pipe = with_lora(few_step, lora_dir / f"{key_format}.safetensors", 0.8)
    expected = pipe(**FOUR_STEPS, width=SIZE, height=SIZE, generator=generator(7)).images[0]
    (got,) = run(
        fast_engine,
        scheduler=scheduler,
        num_inference_steps=4,
        guidance_scale=1.0,
        lora_id=key_format,
        lora_scale=0.8,
    )
    assert_same_image(got, expected)


FOUR_STEPS = {"prompt": PROMPT, "num_inference_steps": 4, "guidance_scale": 1.0}


@pytest.mark.parametrize("scheduler", ["LCM", "TCD"])
def test_img2img_with_a_few_step_lora(fast_engine, reference, lora_dir, scheduler):
    base, _ = reference
    img2img = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    few_step = with_scheduler(img2img, reference_scheduler(base, scheduler))
    pipe = with_lora(few_step, lora_dir / "kohya.safetensors", 1.0)
    source = smooth_image(SIZE, SIZE)
    steps = {**FOUR_STEPS, "num_inference_steps": 8}
    expected = pipe(**steps, image=source, strength=0.5, generator=generator(7)).images[0]
    (got,) = run(
        fast_engine,
        scheduler=scheduler,
        image=source,
        prompt_strength=0.5,
        num_inference_steps=8,
        guidance_scale=1.0,
        lora_id="kohya",
        lora_scale=1.0,
    )
    assert_same_image(got, expected)


@pytest.mark.parametrize("scheduler", ["LCM", "TCD"])
def test_both_refine_modes_with_a_few_step_lora(fast_engine, reference, lora_dir, scheduler):
    base, refiner = reference
    pipe = with_lora(
        with_scheduler(base, reference_scheduler(base, scheduler)),
        lora_dir / "kohya.safetensors",
        1.0,
    )
    refine = with_scheduler(refiner, reference_scheduler(refiner, scheduler))
    steps = {**FOUR_STEPS, "num_inference_steps": 8}
    latents = pipe(
        **steps,
        width=SIZE,
        height=SIZE,
        denoising_end=0.75,
        output_type="latent",
        generator=(g := generator(7)),
    ).images
    expected = refine(**steps, image=latents, denoising_start=0.75, generator=g).images[0]
    common = {"scheduler": scheduler, "guidance_scale": 1.0, "lora_id": "kohya", "lora_scale": 1.0}
    (got,) = run(
        fast_engine,
        refine="expert_ensemble_refiner",
        high_noise_frac=0.75,
        num_inference_steps=8,
        **common,
    )
    assert_same_image(got, expected)

    latents = pipe(
        **FOUR_STEPS, width=SIZE, height=SIZE, output_type="latent", generator=(g := generator(7))
    ).images
    # 3 refiner steps at strength 0.3: a schedule of 10.
    expected = refine(
        **{**FOUR_STEPS, "num_inference_steps": 10}, image=latents, strength=0.3, generator=g
    ).images[0]
    (got,) = run(
        fast_engine, refine="base_image_refiner", refine_steps=3, num_inference_steps=4, **common
    )
    assert_same_image(got, expected)


def test_more_steps_than_a_few_step_scheduler_takes_is_refused_before_it_runs(fast_engine):
    with pytest.raises(InvalidInputs) as info:
        check_fields({"scheduler": "LCM", "num_inference_steps": 51}, REPLICATE, Caps())
    assert "at most 50" in str(info.value) and info.value.problems[0].field == "num_inference_steps"
    check_fields({"scheduler": "LCM", "num_inference_steps": 50}, REPLICATE, Caps())
    with pytest.raises(InvalidInputs, match="use 15 or fewer"):
        body = {"scheduler": "TCD", "refine": "base_image_refiner", "refine_steps": 16}
        check_fields({**body, "num_inference_steps": 4}, REPLICATE, Caps())


# ---- DeepCache ---------------------------------------------------------------------------------


def cached(pipe, interval: int):
    """DeepCache's own helper on diffusers' pipeline, as its README shows."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    return helper


@pytest.mark.parametrize(("scheduler", "interval"), [("K_EULER", 3), ("HeunDiscrete", 2)])
def test_cache_interval_equals_the_deepcache_helper(engine, reference, scheduler, interval):
    base, _ = reference
    pipe = with_scheduler(base, reference_scheduler(base, scheduler))
    with enabled(cached(pipe, interval)):
        expected = pipe(
            prompt=PROMPT,
            width=SIZE,
            height=SIZE,
            num_inference_steps=10,
            guidance_scale=7.5,
            generator=generator(7),
        ).images[0]
    (got,) = run(engine, scheduler=scheduler, num_inference_steps=10, cache_interval=interval)
    assert_same_image(got, expected)
    (plain,) = run(engine, scheduler=scheduler, num_inference_steps=10)
    assert np.abs(pixels(got) - pixels(plain)).max() > 0  # the cache did change the work


def test_each_refiner_stage_caches_its_own_features(engine, reference):
    base, refiner = reference
    steps = {"prompt": PROMPT, "num_inference_steps": 12, "guidance_scale": 7.5}
    with enabled(cached(base, 3)):
        latents = base(
            **steps,
            width=SIZE,
            height=SIZE,
            denoising_end=0.75,
            output_type="latent",
            generator=(g := generator(7)),
        ).images
    with enabled(cached(refiner, 3)):
        expected = refiner(**steps, image=latents, denoising_start=0.75, generator=g).images[0]
    (got,) = run(
        engine,
        refine="expert_ensemble_refiner",
        high_noise_frac=0.75,
        num_inference_steps=12,
        cache_interval=3,
    )
    assert_same_image(got, expected)


@pytest.mark.parametrize(("scheduler", "interval"), [("K_EULER", 3), ("HeunDiscrete", 2)])
def test_the_base_image_refiner_caches_its_own_features(engine, reference, scheduler, interval):
    """The refiner re-noises the base's image to 0.3 and runs the tail of its own schedule:
    the cache counts that tail's steps as the helper does."""
    from sdxl.inputs.scheduler_table import refiner_schedule_for

    base, refiner = reference
    steps = 8
    pipes = [with_scheduler(p, reference_scheduler(p, scheduler)) for p in (base, refiner)]
    with enabled(cached(pipes[0], interval)):
        image = pipes[0](
            prompt=PROMPT,
            width=SIZE,
            height=SIZE,
            num_inference_steps=steps,
            guidance_scale=7.5,
            output_type="latent",
            generator=(g := generator(7)),
        ).images
    with enabled(cached(pipes[1], interval)):
        expected = pipes[1](
            prompt=PROMPT,
            image=image,
            strength=0.3,
            num_inference_steps=refiner_schedule_for(steps, 0.3),
            guidance_scale=7.5,
            generator=g,
        ).images[0]
    (got,) = run(
        engine,
        scheduler=scheduler,
        refine="base_image_refiner",
        num_inference_steps=steps,
        cache_interval=interval,
    )
    assert_same_image(got, expected)


def test_img2img_with_a_resident_lora_and_the_cache(fast_engine, reference, lora_dir):
    base, _ = reference
    img2img = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    pipe = with_lora(img2img, lora_dir / "peft.safetensors", 0.7)
    source = smooth_image(SIZE, SIZE)
    with enabled(cached(pipe, 2)):
        expected = pipe(
            prompt=PROMPT,
            image=source,
            strength=0.8,
            num_inference_steps=10,
            guidance_scale=7.5,
            generator=generator(7),
        ).images[0]
    (got,) = run(
        fast_engine,
        image=source,
        prompt_strength=0.8,
        num_inference_steps=10,
        lora_id="peft",
        lora_scale=0.7,
        cache_interval=2,
    )
    assert_same_image(got, expected)


@pytest.mark.parametrize("refine", ["no_refiner", "base_image_refiner"])
def test_the_cache_adds_no_host_sync(engine, monkeypatch, refine):
    """DeepCache's own helper reads each UNet call's timestep with .item(), a host sync per
    step on a GPU; here each call's step comes from the step plan: a cached job makes no more
    .item() calls than a plain one."""
    import torch

    calls: list[int] = []
    real = torch.Tensor.item

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    options = {"num_inference_steps": 10, "refine": refine, "scheduler": "HeunDiscrete"}
    run(engine, **options)
    plain = len(calls)
    calls.clear()
    run(engine, **options, cache_interval=3)
    assert len(calls) == plain


def module_dicts(unet) -> dict[str, dict]:
    return {name: dict(vars(module)) for name, module in unet.named_modules()}


def test_the_cache_leaves_no_trace_on_the_shared_unets(engine):
    models = engine.models
    before = [module_dicts(unet) for unet in (models.base.unet, models.refiner.unet)]
    (plain,) = run(engine, num_inference_steps=6, refine="expert_ensemble_refiner")
    run(engine, num_inference_steps=6, refine="expert_ensemble_refiner", cache_interval=2)
    after = [module_dicts(unet) for unet in (models.base.unet, models.refiner.unet)]
    for was, now in zip(before, after, strict=True):
        assert was.keys() == now.keys()
        for name in was:
            assert set(now[name]) == set(was[name]), name  # no forward left behind
            assert all(now[name][k] is was[name][k] for k in was[name] if k != "training"), name
    (again,) = run(engine, num_inference_steps=6, refine="expert_ensemble_refiner")
    assert np.array_equal(pixels(again), pixels(plain))


@contextmanager
def enabled(helper):
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
