"""IP-Adapter on the tiny model: each mode equals diffusers' own pipeline with `load_ip_adapter`
on the same folders and `set_ip_adapter_scale` (decoded pixels), with a ControlNet, a LoRA,
several reference images and per-block scales; the adapters stay resident off the UNet, and
the plain request after an IP-Adapter request equals the one before it, fused processors
included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import start_engine
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
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

from sdxl.config import IP_ADAPTER_MODELS
from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.request import Request

pytestmark = pytest.mark.timeout(180)
SIZE = 256
STEPS = 3
PROMPT = "a photo of a cat"
# InstantStyle's style-only scales (SDXL's are [0.0, 1.0, 0.0]: its up block 0 has three
# transformers; the tiny UNet's has two)
STYLE = {"up": {"block_0": [0.0, 1.0]}}


def reference_image(seed: int = 11) -> Image.Image:
    image = smooth_image(320, 240, seed=seed)
    ImageDraw.Draw(image).ellipse((60, 40, 220, 200), fill=(240, 30, 30))
    return image


def request(*images: Image.Image, **kwargs) -> Request:
    args = dict(prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=7)
    args.update(apply_watermark=False, ip_adapter_images=images)
    return Request(**{**args, **kwargs})


def with_adapter(pipe, tiny_weights, name: str, scale=0.6):
    """diffusers' own loading of the adapter into `pipe`."""
    pipe.load_ip_adapter(
        str(tiny_weights / "ip_adapter"),
        subfolder="sdxl_models",
        weight_name=IP_ADAPTER_MODELS[name],
        image_encoder_folder="models/image_encoder",
    )
    pipe.set_ip_adapter_scale(scale)
    return pipe


def fresh_base(tiny_weights):
    return StableDiffusionXLPipeline.from_pretrained(
        tiny_weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )


def reference_args(**kwargs) -> dict:
    args = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=7.5)
    return {**args, "generator": generator(7), **kwargs}


@pytest.mark.parametrize("name", list(IP_ADAPTER_MODELS))
def test_txt2img_equals_diffusers_load_ip_adapter(engine, tiny_weights, name):
    pipe = with_adapter(fresh_base(tiny_weights), tiny_weights, name)
    expected = pipe(
        **reference_args(ip_adapter_image=reference_image(), width=SIZE, height=SIZE)
    ).images[0]
    got = engine.run(request(reference_image(), ip_adapter_model=name)).images[0]
    assert_same_image(got, expected)
    plain = engine.run(request()).images[0]
    assert np.abs(pixels(plain) - pixels(got)).max() > 10, "the adapter did nothing"


def test_img2img_with_several_images_and_block_scales_equals_diffusers(engine, tiny_weights):
    base = with_adapter(fresh_base(tiny_weights), tiny_weights, "plus", scale=STYLE)
    pipe = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    source, images = smooth_image(SIZE, SIZE), [reference_image(), reference_image(5)]
    expected = pipe(**reference_args(image=source, strength=0.8, ip_adapter_image=[images])).images[
        0
    ]
    got = engine.run(request(*images, image=source, ip_adapter_block_scales=STYLE)).images[0]
    assert_same_image(got, expected)


def test_inpaint_equals_diffusers_where_repainted(engine, tiny_weights):
    base = with_adapter(fresh_base(tiny_weights), tiny_weights, "plus-face", scale=0.9)
    pipe = StableDiffusionXLInpaintPipeline(**base.components, add_watermarker=False)
    source, mask = smooth_image(SIZE, SIZE), half_mask(SIZE, SIZE)
    raw = pipe(
        **reference_args(image=source, mask_image=mask, ip_adapter_image=reference_image()),
        strength=0.9,
        width=SIZE,
        height=SIZE,
    ).images[0]
    got = engine.run(
        request(
            reference_image(),
            image=source,
            mask=mask,
            prompt_strength=0.9,
            ip_adapter_model="plus-face",
            ip_adapter_scale=0.9,
        )
    ).images[0]
    interior = np.zeros((SIZE, SIZE), dtype=bool)
    interior[:, SIZE // 2 + 8 :] = True  # beyond the feathered seam
    assert np.abs(pixels(got)[interior] - pixels(raw)[interior]).max() <= PIXEL_TOLERANCE


def test_with_a_controlnet_and_a_lora_equals_diffusers(engine, tiny_weights):
    import cv2

    from sdxl.inputs.lora_refs import LoraRef

    base = with_adapter(fresh_base(tiny_weights), tiny_weights, "vit-h")
    net = ControlNetModel.from_pretrained(tiny_weights / "controlnet" / "canny")
    pipe = StableDiffusionXLControlNetPipeline(
        **base.components, controlnet=net, add_watermarker=False
    )
    pipe.load_lora_weights(
        str(tiny_weights / "loras"), weight_name="offset.safetensors", adapter_name="offset"
    )
    pipe.set_adapters(["offset"], [1.2])
    control = reference_image(3).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    edges = cv2.Canny(np.asarray(control), 100, 200)
    control_map = Image.fromarray(np.stack([edges] * 3, axis=-1))
    expected = pipe(
        **reference_args(image=control_map, ip_adapter_image=reference_image()),
        width=SIZE,
        height=SIZE,
        controlnet_conditioning_scale=0.75,
    ).images[0]
    unit = ControlUnit("canny", reference_image(3))
    lora = (LoraRef("offset", 1.2, "offset:1.2"),)
    got = engine.run(
        request(reference_image(), ip_adapter_model="vit-h", controls=(unit,), loras=lora)
    )
    assert_same_image(got.images[0], expected)


def test_the_unet_is_put_back_fused_and_the_adapters_stay_resident(tiny_weights):
    """On the fast path's fused processors: the plain request after IP-Adapter requests equals
    the one before them, the processors are the fused ones again, the projection and config
    are as loaded; at most one adapter stays resident with the bound at 1."""
    from sdxl.engine import Engine, EngineSettings
    from sdxl.model.loading import load_models
    from sdxl.settings import Runtime

    runtime = Runtime(weights_dir=tiny_weights, dtype="float32", fuse_qkv="1", warmup="0")
    engine = Engine(
        runtime, EngineSettings(max_resident_ip_adapters=1), models=load_models(runtime)
    )
    engine.load()
    try:
        unet = engine.models.base.unet
        processors = {name: type(proc) for name, proc in unet.attn_processors.items()}
        assert set(processors.values()) == {type(next(iter(unet.attn_processors.values())))}
        before = engine.run(request()).images[0]
        for name in ("vit-h", "plus"):
            got = engine.run(request(reference_image(), ip_adapter_model=name)).images[0]
            assert np.abs(pixels(got) - pixels(before)).max() > 10
        assert engine.runner.guides.ip_adapters.names == ["plus"]
        after = engine.run(request()).images[0]
        assert np.array_equal(pixels(before), pixels(after))
        assert {name: type(proc) for name, proc in unet.attn_processors.items()} == processors
        assert "FusedAttnProcessor2_0" in {cls.__name__ for cls in processors.values()}
        assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    finally:
        engine.close()


def test_a_fresh_engine_after_an_adapter_request_is_an_idle_ones(tiny_weights, engine):
    """The shared engine after the module's IP-Adapter requests answers a plain request as an
    engine that never saw one."""
    idle = start_engine(tiny_weights)
    try:
        expected = idle.run(request()).images[0]
    finally:
        idle.close()
    engine.run(request(reference_image()))
    assert np.array_equal(pixels(engine.run(request()).images[0]), pixels(expected))


def test_block_scales_that_do_not_fit_the_unet_fail_the_job_naming_them(engine):
    from sdxl.errors import InputError

    sdxl_style = {"up": {"block_0": [0.0, 1.0, 0.0]}}  # SDXL's three; the tiny UNet has two
    with pytest.raises(InputError) as caught:
        engine.run(request(reference_image(), ip_adapter_block_scales=sdxl_style))
    assert caught.value.field == "ip_adapter_block_scales"
    assert "Expected 2 scales" in str(caught.value)


def test_the_hires_fix_keeps_the_adapter_in_its_second_pass(engine, tiny_weights):
    base = with_adapter(fresh_base(tiny_weights), tiny_weights, "plus")
    low = base(**reference_args(ip_adapter_image=reference_image(), width=SIZE, height=SIZE))
    second = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    upscaled = low.images[0].resize((384, 384), Image.Resampling.LANCZOS)
    args = dict(image=upscaled, strength=0.5, num_inference_steps=4)
    expected = second(**reference_args(**args, ip_adapter_image=reference_image())).images[0]
    hires = dict(hires_scale=1.5, hires_upscaler="Lanczos", hires_strength=0.5, hires_steps=2)
    got = engine.run(request(reference_image(), **hires)).images[0]
    assert_same_image(got, expected)
