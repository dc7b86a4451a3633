"""The hires fix's second pass on the tiny model: diffusers' own SDXL img2img on the same
upscaled input (Pillow's Lanczos of the first pass's pixels, torch's interpolation of its
latents), refiner modes, the target size's rules, progress counting both passes, cancel."""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image
from support.helpers import assert_same_image, generator

from sdxl.engine import JobEvents
from sdxl.errors import InputError
from sdxl.generate.plan import plan_generation
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.hires_size import hires_size
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps
from sdxl.upscale.latents import LATENT_MODES, is_latent, upscale_latents
from sdxl.upscale.pixels import resize_pixels

pytestmark = pytest.mark.timeout(120)
SIZE = 256
STEPS = 4
PROMPT = "a photo of a cat"


def request(**kwargs) -> Request:
    args = dict(prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=7)
    args.update(apply_watermark=False, hires_scale=1.5, hires_strength=0.5)
    return Request(**{**args, **kwargs})


def reference_img2img(base, image, size: int, **overrides) -> Image.Image:
    """diffusers' SDXL img2img over the base's components: the second pass's arguments."""
    img2img = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    args = dict(prompt=PROMPT, image=image, strength=0.5, num_inference_steps=STEPS)
    args.update(guidance_scale=7.5, generator=generator(7))
    out = img2img(**{**args, **overrides}).images[0]
    assert out.size == (size, size)
    return out


def first_pass(base, output_type: str):
    args = dict(prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS)
    return base(**args, guidance_scale=7.5, generator=generator(7), output_type=output_type)


def test_lanczos_second_pass_equals_diffusers_img2img(engine, reference):
    base, _ = reference
    first = first_pass(base, "pil").images[0]
    upscaled = first.resize((384, 384), Image.Resampling.LANCZOS)
    expected = reference_img2img(base, upscaled, 384)
    result = engine.run(request(hires_upscaler="Lanczos", hires_steps=2))  # a schedule of 4
    assert_same_image(result.images[0], expected)
    params = result.parameters
    assert (params["hires_target_width"], params["hires_target_height"]) == (384, 384)
    assert (params["hires_pass_steps"], params["hires_steps"], params["hires_scale"]) == (2, 2, 1.5)


def test_latent_second_pass_equals_diffusers_img2img(engine, reference):
    base, _ = reference
    latents = first_pass(base, "latent").images
    upscaled = torch.nn.functional.interpolate(latents, size=(64, 64), mode="bicubic")
    expected = reference_img2img(base, upscaled, 512, prompt="a dog", num_inference_steps=6)
    got = engine.run(
        request(
            hires_upscaler="Latent (bicubic)",
            hires_scale=2,
            hires_prompt="a dog",
            hires_steps=3,  # run, as A1111 counts them: img2img's schedule of 6 at 0.5
        )
    )
    assert_same_image(got.images[0], expected)


def test_refiner_then_latent_upscale(engine, reference):
    """expert_ensemble_refiner: the refiner's final latents are the second pass's input."""
    base, refiner = reference
    latents = base(
        prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, denoising_end=0.7,
        guidance_scale=7.5, output_type="latent", generator=(g := generator(7)),
    ).images  # fmt: skip
    refined = refiner(
        prompt=PROMPT, image=latents, num_inference_steps=STEPS, denoising_start=0.7,
        guidance_scale=7.5, output_type="latent", generator=g,
    ).images  # fmt: skip
    upscaled = torch.nn.functional.interpolate(refined, size=(48, 48), mode="bilinear")
    expected = reference_img2img(base, upscaled, 384)
    got = engine.run(request(refine="expert_ensemble_refiner", high_noise_frac=0.7, hires_steps=2))
    assert_same_image(got.images[0], expected)


def test_steps_count_both_passes_in_order(engine):
    events: list[tuple] = []
    job = engine.submit(
        request(hires_upscaler="Nearest", hires_steps=3),  # 3 run: a schedule of 6 at 0.5
        preview_every=2,
        events=JobEvents(
            step=lambda job, stage, done, total: events.append(("step", stage, done, total)),
            preview=lambda job, p: events.append(("preview", p.stage, p.step, p.total, p.width)),
        ),
    )
    assert job.wait(60) and job.status == "succeeded", job.error
    plan = job.generation.plan
    assert (plan.base_steps, plan.hires_steps, plan.total_steps) == (4, 3, 7)
    steps = [e[1:] for e in events if e[0] == "step"]
    assert steps == [("base", i, 4) for i in range(1, 5)] + [("hires", i, 3) for i in (1, 2, 3)]
    assert job.steps == {"base": 4, "refiner": 0, "hires": 3}
    previews = sorted(e[1:] for e in events if e[0] == "preview")
    assert previews == sorted(
        [("base", 2, 4, 32), ("base", 4, 4, 32), ("hires", 2, 3, 48), ("hires", 3, 3, 48)]
    )
    assert job.result().images[0].size == (384, 384)


def test_cancel_during_the_second_pass(engine):
    seen: list[tuple] = []
    cancelled = threading.Event()

    def on_step(job, stage, done, total):
        seen.append((stage, done))
        if stage == "hires" and done == 2:
            job.cancel()
            cancelled.set()

    job = engine.submit(request(hires_steps=40), events=JobEvents(step=on_step))
    assert job.wait(60) and job.status == "canceled"
    assert cancelled.is_set() and seen[-1] == ("hires", 2)  # no step after the cancel


# ---- sizes and limits ------------------------------------------------------------------------


def test_target_size_rules():
    assert hires_size(256, 256, 1.5, None, None, 10**7) == (384, 384)
    assert hires_size(832, 1216, 1.3, None, None, 10**7) == (1080, 1576)  # rounded down to 8
    assert hires_size(832, 1216, None, 1000, None, 10**7) == (1000, 1456)  # the aspect kept
    assert hires_size(832, 1216, None, None, 1300, 10**7) == (888, 1296)
    assert hires_size(256, 256, 2, 512, 320, 10**7) == (512, 320)  # the sides win over scale


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((1024, 1024, 3, None, None), "hires_scale"),  # 3072: over the side limit
        ((1024, 1024, None, 2048, None), "hires_width"),  # 2048x2048: over the pixels
        ((1024, 1024, None, None, 2000), "hires_height"),
    ],
)
def test_target_over_the_limits_names_its_input(args, field):
    with pytest.raises(InputError) as caught:
        hires_size(*args, max_pixels=1024 * 1024 * 3)
    assert caught.value.field == field and field in str(caught.value)


def test_boundary_checks_the_target_of_text_to_image():
    body = {"width": 1024, "height": 1024, "hires_scale": 2.5}
    with pytest.raises(InvalidInputs) as caught:
        check_fields(body, REPLICATE, Caps())
    assert caught.value.problems[0].field == "hires_scale"
    assert "2560x2560" in str(caught.value)
    check_fields({**body, "hires_scale": 1.5}, REPLICATE, Caps())
    with pytest.raises(InvalidInputs, match="hires_steps"):
        check_fields({**body, "hires_scale": 1.5, "hires_steps": 60}, REPLICATE, Caps(max_steps=50))
    lcm = {**body, "hires_scale": 1.5, "scheduler": "LCM", "num_inference_steps": 4}
    check_fields(lcm, REPLICATE, Caps())
    with pytest.raises(InvalidInputs) as caught:
        check_fields({**lcm, "hires_steps": 60}, REPLICATE, Caps())  # LCM's few-step limit
    assert caught.value.problems[0].field == "hires_steps"


def test_img2img_target_is_checked_when_planned(models):
    source = Image.new("RGB", (1024, 768))
    with pytest.raises(InputError) as caught:
        plan_generation(models, Request(prompt="x", image=source, hires_scale=2.5))
    assert caught.value.field == "hires_scale"
    gen = plan_generation(models, Request(prompt="x", image=source, hires_scale=1.5))
    assert gen.hires_size == (1536, 1152)


@pytest.mark.parametrize(
    ("strength", "steps", "says"),
    [(0.0, 0, "no step"), (0.001, 4, "a schedule of 4000 steps to run hires_steps=4 steps")],
)
def test_a_second_pass_the_model_cannot_schedule_is_refused(models, strength, steps, says):
    req = request(hires_strength=strength, hires_steps=steps)
    with pytest.raises(InputError) as caught:
        plan_generation(models, req)
    assert caught.value.field == "hires_strength" and says in str(caught.value)


def test_hires_steps_are_the_steps_run_as_a1111_counts_them(models):
    """A1111's hr_second_pass_steps is what the second pass runs: diffusers' img2img is
    called with the fewest num_inference_steps that run that many at the strength."""
    for steps, strength, schedule in ((20, 0.7, 29), (10, 0.5, 20), (4, 1.0, 4), (3, 0.3, 10)):
        plan = plan_generation(models, request(hires_steps=steps, hires_strength=strength)).plan
        assert (plan.hires_steps, plan.hires_schedule) == (steps, schedule)
        assert min(int(schedule * strength), schedule) == steps


# ---- the upscalers -------------------------------------------------------------------------


def test_latent_upscalers_are_torchs_interpolation():
    latents = torch.randn(2, 4, 32, 40, generator=generator(1))
    assert set(LATENT_MODES) == {n for n in LATENT_MODES if is_latent(n)}
    got = upscale_latents(latents, 480, 384, "Latent (antialiased)")
    expected = torch.nn.functional.interpolate(
        latents, size=(48, 60), mode="bilinear", antialias=True
    )
    assert torch.equal(got, expected)
    assert not is_latent("Lanczos")


class DoublingModel:
    """A stand-in for `Upscalers`: a 2x nearest upscale, counting its passes."""

    def __init__(self):
        self.calls = 0

    def scale(self, name: str) -> int:
        return 2

    def upscale(self, image, name, on_tile=None):
        self.calls += 1
        return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)


def test_pixel_upscalers_crop_to_a_new_aspect_and_run_models_until_large_enough():
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    (cropped,) = resize_pixels([image], 160, 80, "Lanczos")
    expected = image.resize((160, 160), Image.Resampling.LANCZOS).crop((0, 40, 160, 120))
    assert cropped.tobytes() == expected.tobytes()
    model = DoublingModel()
    (got,) = resize_pixels([image], 200, 200, "4x-UltraSharp", model)
    assert model.calls == 2 and got.size == (200, 200)  # 64 -> 128 -> 256, then Lanczos
    grown = image.resize((256, 256), Image.Resampling.NEAREST)
    assert got.tobytes() == grown.resize((200, 200), Image.Resampling.LANCZOS).tobytes()
