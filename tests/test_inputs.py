"""Every bad input fails early with a message that names it; step plans mirror diffusers."""

from __future__ import annotations

import pytest
from PIL import Image
from support.helpers import half_mask, save, smooth_image

from sdxl.builders.tiny import SDXL_SCHEDULER_CONFIG
from sdxl.cog.inputs import COG
from sdxl.errors import InputError
from sdxl.generate.schedulers import plan_steps
from sdxl.images.inputs import ImageSource
from sdxl.inputs.model_rules import check_request
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.scheduler_table import StepPlanError, refiner_schedule_for
from sdxl.settings import Caps

BAD = [
    ({"width": 1000 + 4}, "width=1004 is not a multiple of 8; use 1000 or 1008"),
    ({"height": 250}, "height=250 is out of range"),
    ({"width": 4096}, "width=4096 is out of range"),
    ({"num_outputs": 0}, "num_outputs=0"),
    ({"num_outputs": 5}, "num_outputs=5"),
    ({"scheduler": "Euler"}, "scheduler='Euler' is not supported; choose one of: DDIM"),
    ({"refine": "yes"}, "refine='yes'"),
    ({"num_inference_steps": 0}, "num_inference_steps=0"),
    ({"num_inference_steps": 501}, "num_inference_steps=501"),
    ({"guidance_scale": -1.0}, "guidance_scale=-1.0"),
    ({"guidance_scale_refiner": 51.0}, "guidance_scale_refiner=51.0"),
    ({"prompt_strength": 1.5}, "prompt_strength=1.5"),
    ({"high_noise_frac": -0.1}, "high_noise_frac=-0.1"),
    ({"refine_steps": 0}, "refine_steps=0"),
    ({"seed": -1}, "seed=-1 is out of range"),
    ({"seed": 2**32}, "seed=4294967296"),
    ({"timestep_spacing": "cosine"}, "timestep_spacing='cosine'"),
    ({"output_format": "gif"}, "output_format='gif'"),
    ({"output_quality": 0}, "output_quality=0"),
    ({"lora_scale": 2.5}, "lora_scale=2.5"),
    ({"prompt": 5}, "prompt=5 must be a string"),
    ({"num_outputs": 1.5}, "num_outputs=1.5 must be an integer"),
    ({"seed": True}, "seed=true must be an integer"),
    ({"apply_watermark": "yes"}, "apply_watermark='yes' must be true or false"),
    ({"prompt": "x" * 10_001}, "prompt has 10001 characters"),
    ({"negative_prompt_2": "x" * 10_001}, "negative_prompt_2 has 10001 characters"),
    ({"refine": "expert_ensemble_refiner", "high_noise_frac": 1.0}, "high_noise_frac=1.0"),
    ({"refine": "expert_ensemble_refiner", "high_noise_frac": 0.0}, "high_noise_frac=0.0"),
]


def check(**values) -> None:
    """Both tiers of the rules, as a request meets them: the boundary, then the preparation."""
    check_request(check_fields(values, COG, Caps()).request())


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[str(k)[:40] for k, _ in BAD])
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(InputError) as err:
        check(**kwargs)
    assert message in str(err.value)


def test_defaults_are_valid():
    check()
    check_request(Request())


def test_null_means_not_given():
    assert check_fields({"prompt": None}, COG, Caps()).request().prompt == Request().prompt


def test_mask_without_image():
    with pytest.raises(InputError, match="mask was given without image"):
        check_request(Request(mask=half_mask(256, 256)))


def test_a_path_is_not_an_image(tmp_path):
    path = save(smooth_image(256, 256), tmp_path, "in.png")
    with pytest.raises(InputError, match="image must be a string"):
        check(image=path)


def _run(engine, **kwargs):
    """A job through the engine; image and mask files go in as their bytes, as the APIs
    hand them over, and are decoded when the job is prepared."""
    args = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 4, "seed": 1}
    for name in ("image", "mask"):
        if name in kwargs:
            kwargs[name] = ImageSource(name, data=kwargs[name].read_bytes())
    return engine.run(Request(**{**args, **kwargs}))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not an image at all", "image is not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image is not a readable image"),
    ],
)
def test_unreadable_image(engine, tmp_path, content, expected):
    path = tmp_path / "in.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        _run(engine, image=path)


def test_truncated_png(engine, tmp_path):
    good = save(smooth_image(256, 256), tmp_path, "good.png").read_bytes()
    path = tmp_path / "in.png"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="image is not a readable image"):
        _run(engine, image=path)


def test_image_too_small(engine, tmp_path):
    path = save(smooth_image(200, 300), tmp_path, "small.png")
    with pytest.raises(InputError, match="image is 200x300; each side must be at least 256"):
        _run(engine, image=path)


def test_mask_aspect_mismatch(engine, tmp_path):
    image = save(smooth_image(256, 256), tmp_path, "in.png")
    mask = save(half_mask(300, 256), tmp_path, "mask.png")
    with pytest.raises(InputError, match=r"mask is 300x256 .* send a mask with the image's"):
        _run(engine, image=image, mask=mask)


def test_img2img_strength_below_one_step(engine, tmp_path):
    image = save(smooth_image(256, 256), tmp_path, "in.png")
    with pytest.raises(InputError, match="prompt_strength=0.2 x num_inference_steps=4"):
        _run(engine, image=image, prompt_strength=0.2)


def test_ensemble_with_img2img_needs_base_steps(engine, tmp_path):
    image = save(smooth_image(256, 256), tmp_path, "in.png")
    with pytest.raises(InputError, match="base would run no step"):
        _run(
            engine,
            image=image,
            prompt_strength=0.3,
            refine="expert_ensemble_refiner",
            high_noise_frac=0.5,
            num_inference_steps=10,
        )


@pytest.mark.parametrize(("fraction", "stage"), [(0.01, "base"), (0.9999, "refiner")])
def test_ensemble_split_too_fine(engine, fraction, stage):
    with pytest.raises(InputError, match=f"the {stage} would run no step"):
        _run(engine, refine="expert_ensemble_refiner", high_noise_frac=fraction)


def _plan(**kwargs):
    args = dict(
        steps=30,
        spacing=None,
        strength=None,
        refine="expert_ensemble_refiner",
        high_noise_frac=0.8,
        refine_steps=None,
        refine_strength=0.3,
    )
    args.update(kwargs)
    config = SDXL_SCHEDULER_CONFIG
    return plan_steps(args.pop("name", "K_EULER"), config, config, **args)


def test_plan_ensemble_30_steps_is_23_plus_7():
    plan = _plan()
    assert (plan.base_steps, plan.refiner_steps) == (23, 7)


def test_plan_heun_ends_on_a_full_step():
    plan = _plan(name="HeunDiscrete", steps=10)
    assert plan.refiner_steps % 2 == 1


@pytest.mark.parametrize("wanted", [1, 2, 3, 6, 20, 50, 150, 500])
def test_refiner_schedule_runs_exactly_wanted(wanted):
    schedule = refiner_schedule_for(wanted, 0.3)
    assert min(int(schedule * 0.3), schedule) == wanted
    assert int((schedule - 1) * 0.3) < wanted  # the smallest such schedule


def test_plan_rejects_zero_strength():
    with pytest.raises(StepPlanError, match="prompt_strength=0.0"):
        _plan(refine="no_refiner", strength=0.0)


def test_unet_passes_match_plan(engine):
    """Count real UNet calls: the ensemble at 30 steps runs 23 base + 7 refiner passes."""
    calls = {"base": 0, "refiner": 0}
    hooks = [
        engine.models.base.unet.register_forward_hook(
            lambda *a: calls.__setitem__("base", calls["base"] + 1)
        ),
        engine.models.refiner.unet.register_forward_hook(
            lambda *a: calls.__setitem__("refiner", calls["refiner"] + 1)
        ),
    ]
    try:
        result = _run(engine, refine="expert_ensemble_refiner", num_inference_steps=30)
        assert calls == {"base": 23, "refiner": 7}
        assert (result.plan.base_steps, result.plan.refiner_steps) == (23, 7)
        calls.update(base=0, refiner=0)
        _run(engine, refine="base_image_refiner", refine_steps=5)
        assert calls == {"base": 4, "refiner": 5}
    finally:
        for hook in hooks:
            hook.remove()


def test_exif_orientation_applied(engine, tmp_path):
    img = smooth_image(320, 256)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes())
    result = _run(engine, image=path, prompt_strength=0.5)
    assert result.images[0].size == (256, 320)
