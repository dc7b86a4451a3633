"""`prompt_syntax` on a request, on the shared engine (tiny model): `a1111` reads A1111's
language (a prompt whose weights are all 1.0 gives the plain text's pixels, a weight changes
them); `plain`, the default, keeps brackets literal, as diffusers' own pipeline reads them. The
surfaces: Replicate's and DataCrunch's default is plain, A1111's API is always a1111, OpenAI's
follows its server setting."""

from __future__ import annotations

import numpy as np
import pytest
from support.helpers import (
    assert_same_image,
    generator,
    pixels,
    reference_scheduler,
    with_scheduler,
)

from sdxl.http.a1111.fields import TXT2IMG
from sdxl.http.datacrunch.fields import DATACRUNCH
from sdxl.http.openai import fields as openai_fields
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps

SIZE = 256
BASE = {"width": SIZE, "height": SIZE, "seed": 7, "num_inference_steps": 3}


def image(engine, prompt: str, syntax: str, **extra):
    request = Request(prompt=prompt, prompt_syntax=syntax, apply_watermark=False, **BASE, **extra)
    (img,) = engine.run(request).images
    return img


def differs(a, b) -> bool:
    return np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max() > 0


def test_weights_of_one_give_the_plain_texts_pixels(engine):
    weighted = image(engine, "a (cat:1.0) \\(hat\\)", "a1111", negative_prompt="(ugly:1.0)")
    plain = image(engine, "a cat (hat)", "plain", negative_prompt="ugly")
    assert_same_image(weighted, plain, tolerance=0)


def test_a_weight_changes_the_image(engine):
    weighted = image(engine, "a (cat:1.5)", "a1111")
    assert differs(weighted, image(engine, "a cat", "plain"))
    assert differs(weighted, image(engine, "a (cat:1.5)", "plain"))


def test_plain_keeps_brackets_literal_as_diffusers_reads_them(engine, reference):
    base, _ = reference
    pipe = with_scheduler(base, reference_scheduler(base, "K_EULER"))
    expected = pipe(
        prompt="a (cat) [hat]",
        width=SIZE,
        height=SIZE,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=generator(7),
    ).images[0]
    assert_same_image(image(engine, "a (cat) [hat]", "plain"), expected, tolerance=0)


def test_the_refiner_reads_the_syntax_too(engine):
    refined = {"refine": "expert_ensemble_refiner", "negative_prompt": "(blurry:1.0)"}
    weighted = image(engine, "a (cat:1.0), hat", "a1111", **refined)
    plain = image(engine, "a cat, hat", "plain", **{**refined, "negative_prompt": "blurry"})
    assert_same_image(weighted, plain, tolerance=0)


def request_of(surface, body: dict) -> Request:
    return check_fields(body, surface, Caps()).request()


def test_each_surface_sets_the_syntax(monkeypatch):
    assert request_of(REPLICATE, {"prompt": "x"}).prompt_syntax == "plain"
    assert request_of(REPLICATE, {"prompt": "x", "prompt_syntax": "a1111"}).prompt_syntax == "a1111"
    assert request_of(DATACRUNCH, {"prompt": "x"}).prompt_syntax == "plain"
    body = {"prompt": "x", "prompt_syntax": "a1111"}
    assert request_of(DATACRUNCH, body).prompt_syntax == "a1111"
    assert request_of(TXT2IMG, {"prompt": "x"}).prompt_syntax == "a1111"
    assert request_of(TXT2IMG, {"prompt": "x", "prompt_syntax": "plain"}).prompt_syntax == "a1111"
    generations = openai_fields.GENERATIONS
    assert request_of(generations, {"prompt": "x"}).prompt_syntax == "plain"
    monkeypatch.setattr(openai_fields, "PROMPT_SYNTAX", "a1111")
    assert request_of(generations, {"prompt": "x"}).prompt_syntax == "a1111"
    with pytest.raises(InvalidInputs) as err:  # a server setting, not a request's field
        request_of(generations, {"prompt": "x", "prompt_syntax": "plain"})
    assert "prompt_syntax" in str(err.value.problems)


def test_an_unknown_syntax_is_refused_naming_the_choices():
    with pytest.raises(InvalidInputs) as err:
        request_of(REPLICATE, {"prompt": "x", "prompt_syntax": "comfy"})
    assert "plain, a1111" in str(err.value.problems)
