"""Style presets and aspect ratios: what they do to a request, and end to end."""

from __future__ import annotations

import json

import pytest
from support.helpers import assert_same_image, generator, smooth_image

from sdxl.cog.inputs import COG
from sdxl.config import ASPECT_RATIOS, STYLES, STYLES_FILE
from sdxl.errors import InputError
from sdxl.inputs.model_rules import check_request
from sdxl.inputs.presets import apply_presets
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.settings import Caps

USUAL_SDXL_STYLES = {
    "cinematic",
    "photographic",
    "anime",
    "digital-art",
    "comic-book",
    "fantasy-art",
    "analog-film",
    "neon-punk",
    "isometric",
    "low-poly",
    "origami",
    "line-art",
    "craft-clay",
    "3d-model",
    "pixel-art",
    "enhance",
}


def test_style_file_has_the_usual_set_with_templates():
    styles = json.loads(STYLES_FILE.read_text())
    assert set(styles) >= USUAL_SDXL_STYLES
    for name, style in styles.items():
        assert "{prompt}" in style["prompt"], name
        assert style["negative_prompt"], name


def test_style_wraps_prompt_and_prepends_negative():
    req = apply_presets(Request(prompt="a cat", negative_prompt="text", style_selected="anime"))
    assert req.prompt == (
        "a cat, anime illustration, clean line work, cel shading, vivid colours, detailed "
        "background"
    )
    assert req.negative_prompt == (
        "photograph, realistic skin, 3d render, muddy colours, deformed, text"
    )
    assert req.prompt_2 is None


def test_unknown_style_and_ratio_are_named():
    with pytest.raises(InputError, match="style_selected='vaporwave' is not supported"):
        check_fields({"style_selected": "vaporwave"}, COG, Caps())
    with pytest.raises(InputError, match="aspect_ratio='5:4' is not supported; choose one of: 1:1"):
        check_fields({"aspect_ratio": "5:4"}, COG, Caps())


# SDXL's training buckets for these ratios (the SDXL report, appendix I; about 1 megapixel each).
TRAINED = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}


def test_every_ratio_offered_is_a_trained_resolution():
    assert set(ASPECT_RATIOS) == set(TRAINED)


@pytest.mark.parametrize("ratio", list(TRAINED))
def test_aspect_ratio_sets_trained_resolution(ratio):
    req = apply_presets(Request(aspect_ratio=ratio, width=512, height=512))
    assert (req.width, req.height) == TRAINED[ratio]
    wide, high = map(int, ratio.split(":"))
    assert abs(req.width / req.height - wide / high) < 0.1
    check_request(req)


def test_styled_generation_equals_diffusers_with_templated_prompt(engine, reference):
    base, _ = reference
    style = STYLES["cinematic"]
    expected = base(
        prompt=style["prompt"].replace("{prompt}", "a cat"),
        negative_prompt=style["negative_prompt"],
        width=256,
        height=256,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=generator(4),
    ).images[0]
    req = Request(prompt="a cat", style_selected="cinematic", width=256, height=256)
    result = engine.run(
        Request(**{**req.__dict__, "num_inference_steps": 3, "seed": 4, "apply_watermark": False}),
    )
    assert_same_image(result.images[0], expected)
    assert result.parameters["style_selected"] == "cinematic"


def test_aspect_ratio_end_to_end_and_ignored_with_image(engine):
    req = Request(prompt="a cat", aspect_ratio="21:9", num_inference_steps=1, seed=1)
    assert engine.run(req).images[0].size == (1536, 640)
    image = smooth_image(320, 256)
    with_image = Request(**{**req.__dict__, "image": image, "prompt_strength": 1.0})
    assert engine.run(with_image).images[0].size == (320, 256)
