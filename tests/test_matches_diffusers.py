"""End to end on the tiny model: the product's pixels equal diffusers' own pipelines'."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.helpers import (
    PIXEL_TOLERANCE,
    REFERENCE_SCHEDULERS,
    assert_same_image,
    generator,
    half_mask,
    pixels,
    reference_scheduler,
    smooth_image,
    with_scheduler,
)

from sdxl.inputs.request import Request

SIZE = 256
STEPS = 4


def run(engine, **kwargs) -> list[Image.Image]:
    """The product's path: a job through the engine."""
    args = {"prompt": "a photo of a cat", "width": SIZE, "height": SIZE}
    args.update(num_inference_steps=STEPS, seed=7, apply_watermark=False)  # diffusers: no mark
    args.update(kwargs)
    return engine.run(Request(**args)).images


def reference_txt2img(pipe, **overrides) -> Image.Image:
    """diffusers' own text-to-image call with the arguments `run` gives the product."""
    args = {"prompt": "a photo of a cat", "width": SIZE, "height": SIZE}
    args.update(num_inference_steps=STEPS, guidance_scale=7.5, generator=generator(7))
    return pipe(**{**args, **overrides}).images[0]


@pytest.mark.parametrize("name", sorted(REFERENCE_SCHEDULERS))
def test_txt2img_each_scheduler(engine, reference, name):
    base, _ = reference
    expected = reference_txt2img(with_scheduler(base, reference_scheduler(base, name)))
    (got,) = run(engine, scheduler=name)
    assert_same_image(got, expected)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacing(engine, reference, spacing):
    base, _ = reference
    pipe = with_scheduler(base, reference_scheduler(base, "DDIM", timestep_spacing=spacing))
    expected = reference_txt2img(pipe)
    (got,) = run(engine, scheduler="DDIM", timestep_spacing=spacing)
    assert_same_image(got, expected)


def test_prompt_2_and_negative_prompts(engine, reference):
    base, _ = reference
    expected = reference_txt2img(
        base,
        prompt_2="a dog",
        negative_prompt="blurry",
        negative_prompt_2="ugly",
        guidance_scale=5.0,
    )
    kwargs = dict(prompt_2="a dog", negative_prompt="blurry", negative_prompt_2="ugly")
    (got,) = run(engine, guidance_scale=5.0, **kwargs)
    assert_same_image(got, expected)
    (without_2,) = run(engine, guidance_scale=5.0, negative_prompt="blurry")
    assert np.abs(pixels(without_2) - pixels(got)).max() > 0, "prompt_2 had no effect"


def test_clip_skip_equals_diffusers_clip_skip(engine, reference):
    """clip_skip=1 is diffusers' clip_skip=1; with a negative prompt, the negative is read at
    the same layer (diffusers' own call reads the negative's penultimate layer whatever
    clip_skip says, so its embeddings are given here, from its encode_prompt)."""
    base, _ = reference
    (got,) = run(engine, clip_skip=1)
    assert_same_image(got, reference_txt2img(base, clip_skip=1))
    (usual,) = run(engine)
    assert np.abs(pixels(usual) - pixels(got)).max() > 0, "clip_skip had no effect"

    def encoded(text):
        embeds, _, pooled, _ = base.encode_prompt(
            text, device=base.device, do_classifier_free_guidance=False, clip_skip=1
        )
        return embeds, pooled

    (prompt, pooled), (negative, negative_pooled) = encoded("a photo of a cat"), encoded("blurry")
    expected = reference_txt2img(
        base, prompt=None, prompt_embeds=prompt, pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled,
    )  # fmt: skip
    (got,) = run(engine, clip_skip=1, negative_prompt="blurry")
    assert_same_image(got, expected)


def test_img2img(engine, reference):
    base, _ = reference
    source = smooth_image(320, 256)
    from diffusers import StableDiffusionXLImg2ImgPipeline

    img2img = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    expected = img2img(
        prompt="a photo of a cat",
        image=source,
        strength=0.6,
        num_inference_steps=STEPS * 2,
        guidance_scale=7.5,
        generator=generator(7),
    ).images[0]
    (got,) = run(
        engine,
        image=source,
        prompt_strength=0.6,
        num_inference_steps=STEPS * 2,
    )
    assert got.size == (320, 256)
    assert_same_image(got, expected)


def _paste_back(generated: Image.Image, original: Image.Image, mask: Image.Image) -> np.ndarray:
    """Expected composite: the original wherever the mask is black."""
    keep = np.asarray(mask) < 128
    out = pixels(generated).copy()
    out[keep] = pixels(original)[keep]
    return out


def test_inpaint_equals_diffusers_outside_feather_and_keeps_black(engine, reference):
    from diffusers import StableDiffusionXLInpaintPipeline

    base, _ = reference
    source, mask = smooth_image(SIZE, SIZE), half_mask(SIZE, SIZE)
    inpaint = StableDiffusionXLInpaintPipeline(**base.components, add_watermarker=False)
    raw = inpaint(
        prompt="a photo of a cat",
        image=source,
        mask_image=mask,
        strength=0.9,
        guidance_scale=7.5,
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS * 2,
        generator=generator(7),
    ).images[0]
    (got,) = run(
        engine,
        image=source,
        mask=mask,
        prompt_strength=0.9,
        num_inference_steps=STEPS * 2,
    )
    expected = _paste_back(raw, source, mask)
    got_px = pixels(got)
    keep = np.asarray(mask) < 128
    assert (got_px[keep] == pixels(source)[keep]).all(), "kept pixels changed"
    interior = np.zeros_like(keep)
    interior[:, SIZE // 2 + 8 :] = True  # beyond the feathered seam
    assert np.abs(got_px[interior] - expected[interior]).max() <= PIXEL_TOLERANCE


def test_expert_ensemble(engine, reference):
    base, refiner = reference
    latents = base(
        prompt="a photo of a cat",
        width=SIZE,
        height=SIZE,
        num_inference_steps=10,
        denoising_end=0.7,
        guidance_scale=7.5,
        output_type="latent",
        generator=(g := generator(7)),
    ).images
    expected = refiner(
        prompt="a photo of a cat",
        image=latents,
        num_inference_steps=10,
        denoising_start=0.7,
        guidance_scale=7.5,
        generator=g,
    ).images[0]
    (got,) = run(
        engine, refine="expert_ensemble_refiner", high_noise_frac=0.7, num_inference_steps=10
    )
    assert_same_image(got, expected)


def reference_base_image_refiner(reference, guidance_scale_refiner: float):
    """diffusers' base, then its refiner for 3 steps at strength 0.3 (a schedule of 10:
    int(10 * 0.3) == 3), as the product's base_image_refiner with refine_steps=3."""
    base, refiner = reference
    latents = base(
        prompt="a photo of a cat",
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        output_type="latent",
        generator=(g := generator(7)),
    ).images
    return refiner(
        prompt="a photo of a cat",
        image=latents,
        num_inference_steps=10,
        strength=0.3,
        generator=g,
        guidance_scale=guidance_scale_refiner,
    ).images[0]


def test_base_image_refiner_runs_refine_steps(engine, reference):
    expected = reference_base_image_refiner(reference, 3.0)
    (got,) = run(engine, refine="base_image_refiner", refine_steps=3, guidance_scale_refiner=3.0)
    assert_same_image(got, expected)


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
def test_batch_image_equals_its_seed_alone(engine, refine):
    batch = run(engine, num_outputs=3, seed=100, refine=refine, refine_steps=2)
    assert len(batch) == 3
    for i, img in enumerate(batch):
        (alone,) = run(engine, seed=100 + i, refine=refine, refine_steps=2)
        assert_same_image(img, alone, tolerance=2)
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).max() > 10, "batch images are identical"


def unet_batches(unet) -> tuple[list[int], object]:
    """The batch size of every UNet call (2 per image with classifier-free guidance)."""
    sizes: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes, hook


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_at_or_below_one_runs_no_classifier_free_guidance(engine, reference, guidance):
    """diffusers turns guidance off at guidance_scale <= 1: one UNet pass of one image a step."""
    base, _ = reference
    expected = reference_txt2img(base, guidance_scale=guidance)
    sizes, hook = unet_batches(engine.models.base.unet)
    try:
        (got,) = run(engine, guidance_scale=guidance)
    finally:
        hook.remove()
    assert sizes == [1] * STEPS
    assert_same_image(got, expected)


def test_the_refiner_at_guidance_one_as_datacrunch_defaults_it(engine, reference):
    """DataCrunch's guidance_scale_refiner defaults to 1.0: the refiner runs unguided."""
    expected = reference_base_image_refiner(reference, 1.0)
    sizes, hook = unet_batches(engine.models.refiner.unet)
    try:
        (got,) = run(
            engine, refine="base_image_refiner", refine_steps=3, guidance_scale_refiner=1.0
        )
    finally:
        hook.remove()
    assert sizes == [1, 1, 1]
    assert_same_image(got, expected)


BFLOAT16_TOLERANCE = 0  # the same kernels in the same dtype: nothing to differ (measured: 0)


def test_bfloat16_as_the_cpu_default_equals_diffusers_in_bfloat16(tiny_weights):
    """SDXL_DTYPE=auto picks bfloat16 on a CPU with native bfloat16: the product in bfloat16
    against diffusers' own pipeline in bfloat16, on the CPU."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from sdxl.generate.direct import generate
    from sdxl.model.loading import load_models
    from sdxl.settings import Runtime

    runtime = Runtime(weights_dir=tiny_weights, dtype="bfloat16", device="cpu", warmup="0")
    models = load_models(runtime)
    assert models.base.unet.dtype == torch.bfloat16
    base = StableDiffusionXLPipeline.from_pretrained(
        tiny_weights / "base", torch_dtype=torch.bfloat16, add_watermarker=False
    )
    expected = reference_txt2img(base)
    request = Request(
        prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=7
    )
    request = Request(**{**request.__dict__, "apply_watermark": False})
    (got,) = generate(models, request).images
    assert_same_image(got, expected, tolerance=BFLOAT16_TOLERANCE)
