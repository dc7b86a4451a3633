"""AUTOMATIC1111's hires fix fields at the boundary (no server, no model): `enable_hr` and the
hr_* fields become the engine's hires_* inputs, errors name A1111's fields, the infotext gets
A1111's Hires keys, and the Extras body is read as A1111 reads it. The HTTP side (and the
second pass itself) is in test_a1111.py."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from sdxl.http.a1111.fields import TXT2IMG
from sdxl.http.a1111.info import Made, infotext
from sdxl.http.a1111.routes import hires_params
from sdxl.http.a1111.upscalers import extras_request
from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.errors import InvalidRequest
from sdxl.http.openai.fields import GENERATIONS
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

pytestmark = pytest.mark.timeout(30)


def request(**body):
    return check_fields({"prompt": "a cat", **body}, TXT2IMG, Caps()).request()


def test_enable_hr_maps_a1111s_fields_onto_the_engines_hires_inputs():
    hires = request(
        enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", hr_second_pass_steps=7,
        denoising_strength=0.45, hr_sampler_name="DPM++ 2M", hr_scheduler="karras",
        hr_prompt="a sharp cat", hr_negative_prompt="",
    )  # fmt: skip
    assert hires.hires and hires.hires_scale == 1.5 and hires.hires_upscaler == "Lanczos"
    assert (hires.hires_steps, hires.hires_strength) == (7, 0.45)
    assert (hires.hires_scheduler, hires.hires_timestep_spacing) == ("KarrasDPM", None)
    assert (hires.hires_prompt, hires.hires_negative_prompt) == ("a sharp cat", None)
    assert (hires.hires_width, hires.hires_height) == (None, None)
    defaults = request(enable_hr=True)  # A1111's: x2, Latent, its txt2img strength 0.75
    assert (defaults.hires_scale, defaults.hires_upscaler) == (2.0, "Latent")
    assert (defaults.hires_strength, defaults.hires_steps) == (0.75, 0)
    assert defaults.hires_scheduler is None
    same = request(enable_hr=True, hr_sampler_name="Use same sampler", hr_scheduler="")
    assert same.hires_scheduler is None
    euler = request(enable_hr=True, sampler_name="DPM++ 2M", hr_sampler_name="Euler")
    assert (euler.hires_scheduler, euler.hires_timestep_spacing) == ("K_EULER", "linspace")
    sized = request(enable_hr=True, hr_resize_x=640, hr_resize_y=0)
    assert (sized.hires_width, sized.hires_height) == (640, None)


def test_without_enable_hr_the_hires_fields_are_not_read():
    """SillyTavern sends them on every request, with an upscaler of its own A1111."""
    plain = request(hr_scale=3, hr_upscaler="R-ESRGAN 4x+", hr_sampler_name="nope",
                    hr_checkpoint_name="other", denoising_strength=0.3, hr_prompt="x")  # fmt: skip
    assert not plain.hires and plain.hires_scale is None and plain.hires_upscaler == "Latent"
    assert plain.hires_scheduler is None and plain.hires_prompt is None
    assert plain.hires_strength == 0.7  # the engine's default, unused


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"hr_scale": 5}, "hr_scale", "1..4"),
        ({"hr_resize_x": -8}, "hr_resize_x", "0..2048"),
        ({"hr_resize_y": 4096}, "hr_resize_y", "0..2048"),
        ({"hr_second_pass_steps": 501}, "hr_second_pass_steps", "0..500"),
        ({"denoising_strength": 1.5}, "denoising_strength", "0..1"),
        ({"hr_sampler_name": "DPM adaptive"}, "hr_sampler_name", "choose one of"),
        ({"hr_scheduler": "kl_optimal"}, "hr_scheduler", "choose one of"),
        ({"hr_checkpoint_name": "sd_xl_refiner"}, "hr_checkpoint_name", "Use same checkpoint"),
        ({"hr_prompt": "a cat, " * 1500}, "hr_prompt", "SDXL_MAX_PROMPT_CHARS"),
    ],
)
def test_hires_errors_name_a1111s_fields(body, field, words):
    with pytest.raises(InvalidInputs) as caught:
        check_fields({"prompt": "a cat", "enable_hr": True, **body}, TXT2IMG, Caps())
    (problem,) = caught.value.problems
    assert problem.field == field and words in problem.message, problem
    assert "hires_" not in problem.message, problem


def test_img2img_still_has_no_hires_fix():
    from sdxl.http.a1111.fields import IMG2IMG

    body = {"prompt": "a cat", "init_images": [base64.b64encode(png(64, 64)).decode()]}
    with pytest.raises(InvalidInputs) as caught:
        check_fields({**body, "enable_hr": True}, IMG2IMG, Caps())
    assert caught.value.problems[0].field == "enable_hr"
    assert not check_fields({**body, "hr_scale": 9}, IMG2IMG, Caps()).request().hires


def test_the_infotext_carries_a1111s_hires_keys_in_its_order():
    def line(**body) -> str:
        found = check_fields({"prompt": "a cat", "steps": 3, "seed": 7, **body}, TXT2IMG, Caps())
        req = found.request()
        strength = req.hires_strength if req.hires else None  # as routes.made_by sets it
        hires = hires_params(found, req, ("Euler", "Automatic"))
        made = Made(req, [7], "Euler", "Automatic", req.width, req.height, strength,
                    "sdxl", "20260101000000", hires=hires)  # fmt: skip
        return infotext(made, 7).split("\n")[-1]

    start = "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 7, "
    assert line(enable_hr=True, hr_scale=2, denoising_strength=0.7, hr_second_pass_steps=10) == (
        start + "Size: 512x512, Model: sdxl, Denoising strength: 0.7, Hires upscale: 2, "
        "Hires steps: 10, Hires upscaler: Latent, Version: sdxl-cog"
    )
    assert line(
        enable_hr=True, hr_resize_x=768, hr_upscaler="Lanczos", hr_sampler_name="DPM++ 2M",
        hr_scheduler="karras", hr_prompt="a cat, sharp", denoising_strength=0.5,
    ) == (
        start + "Size: 512x512, Model: sdxl, Denoising strength: 0.5, Hires sampler: DPM++ 2M, "
        'Hires prompt: "a cat, sharp", Hires schedule type: Karras, Hires resize: 768x0, '
        "Hires upscaler: Lanczos, Version: sdxl-cog"
    )  # fmt: skip
    assert "Hires" not in line(hr_scale=2) and "Denoising" not in line(hr_scale=2)


def test_datacrunch_takes_the_hires_inputs_and_openai_does_not():
    found = check_fields(
        {"prompt": "a cat", "hires_scale": 1.5, "hires_upscaler": "Nearest", "hires_steps": 4,
         "hires_strength": 0.3}, DATACRUNCH, Caps(),
    ).request()  # fmt: skip
    assert (found.hires_scale, found.hires_upscaler, found.hires_steps) == (1.5, "Nearest", 4)
    assert found.hires_strength == 0.3
    assert not check_fields({"prompt": "a cat"}, DATACRUNCH, Caps()).request().hires
    with pytest.raises(InvalidInputs) as caught:
        check_fields({"prompt": "a cat", "hires_upscaler": "Bicubic"}, DATACRUNCH, Caps())
    assert caught.value.problems[0].field == "hires_upscaler"
    for name in ("hires_scale", "hires_upscaler", "hires_steps", "hires_strength"):
        assert name not in GENERATIONS.by_name
        with pytest.raises(InvalidInputs) as caught:
            check_fields({"prompt": "a cat", name: 1}, GENERATIONS, Caps())
        assert "not an input of this API" in caught.value.problems[0].message


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buffer, "PNG")
    return buffer.getvalue()


def extras(caps: Caps = Caps(), **body):  # noqa: B008 - a frozen dataclass
    image = base64.b64encode(png(320, 256)).decode()
    return extras_request({"image": image, **body}, caps, ["tiny-esrgan"])


def test_extras_sizes_and_infotext_as_a1111_writes_them():
    by = extras(upscaler_1="Lanczos", upscaling_resize=2)
    assert (by.width, by.height, by.upscaler) == (640, 512, "Lanczos")
    assert by.info == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    to = extras(upscaler_1="tiny-esrgan", resize_mode=1, upscaling_resize_w=512,
                upscaling_resize_h=512)  # fmt: skip
    assert (to.width, to.height) == (512, 512)  # covered, then cropped to it
    assert to.info == (
        "Postprocess upscale to: 512x512, Postprocess crop to: 512x512, "
        "Postprocess upscaler: tiny-esrgan"
    )
    uncropped = extras(upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=512,
                       upscaling_resize_h=512, upscaling_crop=False)  # fmt: skip
    assert (uncropped.width, uncropped.height) == (640, 512)
    none = extras(upscaling_resize=8)  # upscaler_1 None: the image as it is (A1111's Extras)
    assert (none.width, none.height, none.info) == (320, 256, "")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"upscaler_1": "Latent"}, "upscaler_1"),  # the hires fix's only
        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, "gfpgan_visibility"),
        ({"upscaler_1": "Lanczos", "codeformer_visibility": 1}, "codeformer_visibility"),
        (
            {"upscaler_1": "Lanczos", "extras_upscaler_2_visibility": 0.3, "upscaler_2": "Nearest"},
            "extras_upscaler_2_visibility",
        ),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 8}, "upscaling_resize"),  # 2560 wide
        (
            {"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 4096},
            "upscaling_resize_w",
        ),
        ({"upscaler_1": "Lanczos", "resize_mode": 2}, "resize_mode"),
        ({"upscaler_1": "Lanczos", "image": "%%%"}, "image"),
    ],
)
def test_extras_errors_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as caught:
        extras(**body)
    assert caught.value.problems[0].field == field, caught.value.problems


def test_extras_size_is_held_to_the_operators_pixel_cap():
    with pytest.raises(InvalidRequest) as caught:
        extras(Caps(max_pixels=512 * 512), upscaler_1="Lanczos", upscaling_resize=2)
    problem = caught.value.problems[0]
    assert problem.field == "upscaling_resize" and "SDXL_MAX_PIXELS" in problem.message


def test_the_replicate_schema_offers_the_hires_inputs_with_their_bounds_under_a_pixel_cap():
    """The playground's form and the Replicate API's document come from this schema: a
    SDXL_MAX_PIXELS cap limits the sides' maximum, not hires_scale's (a scale, not a side)."""
    from sdxl.config import COG_SCHEMA_FILE
    from sdxl.http.caps import cog_schema_with_caps, inline_input_schema
    from sdxl.http.replicate.inputs import REPLICATE

    schema = json.loads(COG_SCHEMA_FILE.read_text())
    capped = inline_input_schema(cog_schema_with_caps(schema, Caps(max_pixels=300_000), REPLICATE))
    properties = capped["properties"]
    assert (properties["hires_scale"]["minimum"], properties["hires_scale"]["maximum"]) == (1, 4)
    assert "SDXL_MAX_PIXELS" in properties["hires_scale"]["description"]
    assert properties["width"]["maximum"] == 1168  # 300000 // 256, floored to 8
    assert "Lanczos" in properties["hires_upscaler"]["enum"]
    assert {"hires_steps", "hires_strength"} <= set(properties)
