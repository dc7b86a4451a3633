"""ControlNet on the tiny model: each mode equals diffusers' own ControlNet pipelines built from
the same weight folders with the same arguments (decoded pixels); canny's map is OpenCV's Canny;
the union model's types; the control models' residency; the plain request after a control
request equals the one before it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)
from PIL import Image, ImageDraw
from support.helpers import (
    PIXEL_TOLERANCE,
    assert_same_image,
    generator,
    half_mask,
    pixels,
    smooth_image,
)

from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.request import Request

pytestmark = pytest.mark.timeout(180)
SIZE = 256
STEPS = 3
PROMPT = "a photo of a cat"


def shapes_image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """Flat shapes on a gradient: clear edges for Canny."""
    image = smooth_image(width, height, seed=3)
    draw = ImageDraw.Draw(image)
    draw.rectangle((30, 40, 120, 150), fill=(250, 250, 250))
    draw.ellipse((130, 60, 230, 200), fill=(10, 20, 30))
    draw.line((0, 230, width, 180), fill=(255, 0, 0), width=6)
    return image


def canny_map(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """OpenCV's Canny of the image at the output size, white edges in three channels: what the
    diffusers docs feed their SDXL ControlNet pipelines."""
    resized = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    edges = cv2.Canny(np.asarray(resized), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def request(*units: ControlUnit, **kwargs) -> Request:
    args = dict(prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=7)
    args.update(apply_watermark=False, controls=units)
    return Request(**{**args, **kwargs})


@pytest.fixture(scope="module")
def nets(tiny_weights):
    """The tiny control models as diffusers loads them, composed without `sdxl`."""
    folder = tiny_weights / "controlnet"
    return {
        "canny": ControlNetModel.from_pretrained(folder / "canny"),
        "depth": ControlNetModel.from_pretrained(folder / "depth"),
        "union": ControlNetUnionModel.from_pretrained(folder / "union"),
    }


def reference_args(**kwargs) -> dict:
    args = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=7.5)
    return {**args, "generator": generator(7), **kwargs}


def test_canny_map_is_opencvs_canny(engine):
    unit = ControlUnit("canny", shapes_image(), low_threshold=50, high_threshold=150)
    made = engine.runner.guides.control_map(unit, SIZE, SIZE)
    expected = canny_map(shapes_image(), 50, 150)
    assert np.array_equal(pixels(made), pixels(expected))
    assert 0 < (pixels(made) > 0).mean() < 0.5  # edges, not a blank or a full map


def test_txt2img_with_canny_equals_diffusers(engine, reference, nets):
    base, _ = reference
    pipe = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    expected = pipe(
        **reference_args(image=canny_map(shapes_image()), width=SIZE, height=SIZE),
        controlnet_conditioning_scale=0.75,
    ).images[0]
    got = engine.run(request(ControlUnit("canny", shapes_image()), return_control_maps=True))
    assert_same_image(got.images[0], expected)
    assert_same_image(got.control_maps[0], canny_map(shapes_image()))
    plain = engine.run(request())
    assert np.abs(pixels(plain.images[0]) - pixels(got.images[0])).max() > 10, "no control"


def test_img2img_with_canny_equals_diffusers(engine, reference, nets):
    base, _ = reference
    pipe = StableDiffusionXLControlNetImg2ImgPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    source = smooth_image(SIZE, SIZE)
    expected = pipe(
        **reference_args(image=source, control_image=canny_map(shapes_image())),
        strength=0.8,
        width=SIZE,
        height=SIZE,
        controlnet_conditioning_scale=1.5,
        control_guidance_start=0.2,
        control_guidance_end=0.9,
    ).images[0]
    unit = ControlUnit("canny", shapes_image(), conditioning_scale=1.5, start=0.2, end=0.9)
    got = engine.run(request(unit, image=source))
    assert_same_image(got.images[0], expected)


def test_inpaint_with_canny_equals_diffusers_where_repainted(engine, reference, nets):
    base, _ = reference
    pipe = StableDiffusionXLControlNetInpaintPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    source, mask = smooth_image(SIZE, SIZE), half_mask(SIZE, SIZE)
    raw = pipe(
        **reference_args(image=source, mask_image=mask, control_image=canny_map(shapes_image())),
        strength=0.9,
        width=SIZE,
        height=SIZE,
        controlnet_conditioning_scale=0.75,
    ).images[0]
    got = engine.run(request(ControlUnit("canny", shapes_image()), image=source, mask=mask))
    got_px, keep = pixels(got.images[0]), np.asarray(mask) < 128
    assert (got_px[keep] == pixels(source)[keep]).all(), "kept pixels changed"
    interior = np.zeros_like(keep)
    interior[:, SIZE // 2 + 8 :] = True  # beyond the feathered seam
    assert np.abs(got_px[interior] - pixels(raw)[interior]).max() <= PIXEL_TOLERANCE


def test_two_controlnets_equal_diffusers_multicontrolnet(engine, reference, nets):
    base, _ = reference
    depth_map = smooth_image(SIZE, SIZE, seed=5)  # a ready map: preprocessor none
    pipe = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=[nets["canny"], nets["depth"]], add_watermarker=False
    )
    expected = pipe(
        **reference_args(image=[canny_map(shapes_image()), depth_map], width=SIZE, height=SIZE),
        controlnet_conditioning_scale=[0.75, 0.5],
        control_guidance_start=[0.0, 0.3],
        control_guidance_end=[1.0, 0.8],
    ).images[0]
    units = (
        ControlUnit("canny", shapes_image()),
        ControlUnit("depth", depth_map, "none", conditioning_scale=0.5, start=0.3, end=0.8),
    )
    got = engine.run(request(*units))
    assert_same_image(got.images[0], expected)


def test_union_with_two_types_equals_diffusers(engine, reference, nets):
    base, _ = reference
    pose = smooth_image(SIZE, SIZE, seed=9)  # a ready map for a type with no preprocessor
    pipe = StableDiffusionXLControlNetUnionPipeline(
        **base.components, controlnet=nets["union"], add_watermarker=False
    )
    expected = pipe(
        **reference_args(control_image=[canny_map(shapes_image()), pose], width=SIZE, height=SIZE),
        control_mode=[3, 0],
        controlnet_conditioning_scale=[0.75, 1.25],
        control_guidance_start=[0.0, 0.0],
        control_guidance_end=[1.0, 1.0],
    ).images[0]
    units = (
        ControlUnit("union_canny", shapes_image()),
        ControlUnit("union_openpose", pose, preprocessor="none", conditioning_scale=1.25),
    )
    got = engine.run(request(*units))
    assert_same_image(got.images[0], expected)


def test_refiner_after_controlled_base_runs_both(engine):
    got = engine.run(request(ControlUnit("canny", shapes_image()), refine="base_image_refiner"))
    assert got.plan.base_steps == STEPS and got.plan.refiner_steps > 0


def test_plain_request_after_control_equals_the_one_before(engine):
    before = engine.run(request()).images[0]
    engine.run(request(ControlUnit("union_canny", shapes_image())))
    engine.run(request(ControlUnit("canny", shapes_image()), ControlUnit("depth", shapes_image())))
    after = engine.run(request()).images[0]
    assert np.array_equal(pixels(before), pixels(after))


def test_control_models_stay_resident_least_recently_used_out(tiny_weights):
    from conftest import start_engine

    engine = start_engine(tiny_weights, max_resident_controlnets=1)
    try:
        engine.run(request(ControlUnit("canny", shapes_image())))
        assert engine.runner.guides.controls.names == ["canny"]
        canny = engine.runner.guides.controls.for_units((ControlUnit("canny", None),))[0]
        engine.run(request(ControlUnit("depth", shapes_image(), preprocessor="none")))
        assert engine.runner.guides.controls.names == ["depth"]
        both = (ControlUnit("canny", shapes_image()), ControlUnit("depth", shapes_image()))
        engine.run(request(*both))  # needs two: both resident for the job, one after it
        assert engine.runner.guides.controls.names == ["depth"]
        assert canny.dtype == torch.float32 and canny.device.type == engine.models.device.type
    finally:
        engine.close()


def test_hires_fix_keeps_the_control_in_its_second_pass(engine, reference, nets):
    """The first pass as diffusers' ControlNet pipeline, upscaled with Lanczos, then diffusers'
    ControlNet img2img at the target size on the same map (which it resizes itself)."""
    base, _ = reference
    control = canny_map(shapes_image())
    first = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    scale = {"controlnet_conditioning_scale": 0.75}  # the units' default (diffusers' differ)
    low = first(**reference_args(image=control, width=SIZE, height=SIZE, **scale)).images[0]
    second = StableDiffusionXLControlNetImg2ImgPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    upscaled = low.resize((384, 384), Image.Resampling.LANCZOS)
    args = dict(image=upscaled, control_image=control, strength=0.5, num_inference_steps=4)
    expected = second(**reference_args(**args, width=384, height=384, **scale)).images[0]
    unit = ControlUnit("canny", shapes_image())
    hires = dict(hires_scale=1.5, hires_upscaler="Lanczos", hires_strength=0.5, hires_steps=2)
    got = engine.run(request(unit, **hires))
    assert_same_image(got.images[0], expected)


def test_a_lora_with_a_controlnet_equals_diffusers(engine, tiny_weights, nets):
    """The LoRA on the base UNet, the ControlNet beside it: diffusers' ControlNet pipeline,
    fresh, with the LoRA loaded by diffusers at the same weight."""
    from diffusers import StableDiffusionXLPipeline

    from sdxl.inputs.lora_refs import LoraRef

    base = StableDiffusionXLPipeline.from_pretrained(
        tiny_weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    pipe.load_lora_weights(
        str(tiny_weights / "loras"), weight_name="offset.safetensors", adapter_name="offset"
    )
    pipe.set_adapters(["offset"], [1.5])
    control = canny_map(shapes_image())
    expected = pipe(
        **reference_args(image=control, width=SIZE, height=SIZE),
        controlnet_conditioning_scale=0.75,
    ).images[0]
    lora = (LoraRef("offset", 1.5, "offset:1.5"),)
    got = engine.run(request(ControlUnit("canny", shapes_image()), loras=lora))
    assert_same_image(got.images[0], expected)
    plain_control = engine.run(request(ControlUnit("canny", shapes_image())))
    assert np.abs(pixels(plain_control.images[0]) - pixels(got.images[0])).max() > 0


def test_a_few_step_scheduler_with_a_controlnet_equals_diffusers(engine, reference, nets):
    from support.helpers import reference_scheduler

    base, _ = reference
    pipe = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=nets["canny"], add_watermarker=False
    )
    pipe.scheduler = reference_scheduler(pipe, "LCM")
    few = dict(num_inference_steps=4, guidance_scale=1.0)
    expected = pipe(
        **reference_args(image=canny_map(shapes_image()), width=SIZE, height=SIZE, **few),
        controlnet_conditioning_scale=0.75,
    ).images[0]
    unit = ControlUnit("canny", shapes_image())
    few["scheduler"] = "LCM"
    assert_same_image(engine.run(request(unit, **few)).images[0], expected)
