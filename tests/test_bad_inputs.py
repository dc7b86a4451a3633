"""The bad-input matrix over every API: Cog's server (coglet, `python -m sdxl serve`), and on
`python -m sdxl api` the DataCrunch endpoint, the Replicate API, OpenAI's Images API
(generations and edits) and AUTOMATIC1111's (txt2img and img2img), real servers on loopback.

Every case (tests/support/bad_inputs.py: the wrong values of every input of each API's own published
schema, hostile files, the edges of the model) gives a precise error that names the input, or
a correct image: never a 5xx, never a traceback, and the server answers afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
import requests
from PIL import Image
from support.api_server import KEYS
from support.bad_inputs import (
    SIZE,
    Case,
    data_uri,
    encoded,
    image_files,
    mask_files,
    photo,
    schema_cases,
)

from sdxl.config import COG_SCHEMA_FILE

pytestmark = pytest.mark.http

BASE = {"prompt": "a cat", "width": SIZE, "height": SIZE, "num_inference_steps": 2, "seed": 1}
GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
NOT_FINITE = "not finite"  # field marker: a JSON parser may refuse the body before any field


def cog_cases() -> list[Case]:
    """The Cog predictor's inputs (the Replicate API takes the same)."""
    schema = json.loads(COG_SCHEMA_FILE.read_text())
    cases = schema_cases(schema["components"]["schemas"]["Input"]["properties"], schema)
    png = data_uri(encoded(photo()))
    for label, data, expect in image_files():
        cases.append(Case(f"image: {label}", {"image": data_uri(data)}, "image", expect))
    for label, data, expect in mask_files():
        cases.append(Case(label, {"image": png, "mask": data_uri(data)}, "mask", expect))
    cases += [
        Case("prompt_strength 0", {"image": png, "prompt_strength": 0}, "prompt_strength", "error"),
        Case("prompt_strength 1", {"image": png, "prompt_strength": 1}, "prompt_strength", "image"),
        Case("mask without image", {"mask": png}, "mask", "error"),
    ]
    for frac in (0, 1):
        changes = {"refine": "expert_ensemble_refiner", "high_noise_frac": frac}
        cases.append(Case(f"high_noise_frac {frac}", changes, "high_noise_frac", "error"))
    one = {"num_inference_steps": 1}
    steps = "num_inference_steps"
    cases += [
        Case("one step, no refiner", {**one, "refine": "no_refiner"}, steps, "image"),
        Case("one step, ensemble", {**one, "refine": "expert_ensemble_refiner"}, steps, "error"),
        Case(
            "one step, base image refiner",
            {**one, "refine": "base_image_refiner", "refine_steps": 1},
            "refine_steps",
            "image",
        ),
    ]
    return cases


def datacrunch_cases(schema: dict) -> list[Case]:
    cases = schema_cases(schema["components"]["schemas"]["GenerateRequest"]["properties"], schema)
    for label, data, expect in image_files():
        changes = {"seed_image": base64.b64encode(data).decode(), "strength": 0.6}
        cases.append(Case(f"seed_image: {label}", changes, "seed_image", expect))
    photo_b64 = base64.b64encode(encoded(photo())).decode()
    one, steps = {"num_inference_steps": 1}, "num_inference_steps"
    refined = {**one, "refiner": True, "num_inference_steps_refiner": 1}
    cases += [
        Case("strength 1", {"seed_image": photo_b64, "strength": 1.0}, "strength", "image"),
        Case("one step, no refiner", one, steps, "image"),
        Case("one step, ensemble", {**one, "is_ensemble": True}, steps, "error"),
        Case("one step, refiner", refined, "num_inference_steps_refiner", "image"),
        Case(
            "ensemble and refiner", {"is_ensemble": True, "refiner": True}, "is_ensemble", "error"
        ),
    ]
    return cases


def marked(cases: list[Case]) -> list[Case]:
    """NaN and infinity are not JSON: a server may refuse the body before reading any field."""
    out = []
    for case in cases:
        values = list(case.changes.values())
        finite = all(not (isinstance(v, float) and not math.isfinite(v)) for v in values)
        out.append(case if finite else Case(case.label, case.changes, NOT_FINITE, case.expect))
    return out


def check_image(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.width >= SIZE // 2 and img.height >= SIZE // 2


def names(field: str, text: str) -> bool:
    return field == NOT_FINITE or field in text


def outcome(case: Case, status: int, error: str | None) -> None:
    assert status < 500, f"{case.label}: HTTP {status}: {error}"
    assert "Traceback" not in (error or ""), f"{case.label}: {error}"
    if case.expect == "error":
        assert error is not None, f"{case.label}: expected an error, got an image"
    if case.expect == "image":
        assert error is None, f"{case.label}: expected an image, got {error}"
    if error is not None:
        assert names(case.field, error), (
            f"{case.label}: the error does not name {case.field}: {error}"
        )


# ---- the servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cog(cog_server):
    return cog_server


@pytest.fixture(scope="module")
def api(plain_api):
    return plain_api


AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


def test_cog_server(cog):
    cases = marked(cog_cases())
    for case in cases:
        assert cog.settles_ready()  # coglet answers 409 until its slot is back
        response = requests.post(  # json.dumps writes NaN and Infinity; requests would refuse
            cog.base + "/predictions",
            data=json.dumps({"input": {**BASE, **case.changes}}),
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {"detail": response.text}
        )
        error = None
        if response.status_code >= 400:
            error = json.dumps(body.get("detail", body))
        elif body.get("status") != "succeeded":
            error = body.get("error") or json.dumps(body)
        else:
            check_image(base64.b64decode(body["output"][0].partition(",")[2]))
        outcome(case, response.status_code, error)
        assert cog.settles_ready(), case.label
    print(f"Cog server: {len(cases)} cases")


def test_datacrunch_endpoint(api):
    schema = requests.get(api.base + "/openapi.json", timeout=10).json()
    cases = marked(datacrunch_cases(schema))
    for case in cases:
        response = requests.post(
            api.base + "/v1/images/stable-diffusion-xl/generate",
            data=json.dumps({**BASE, **case.changes}),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=120,
        )
        error = None
        if response.status_code != 200:
            error = json.dumps(response.json())
        else:
            check_image(base64.b64decode(response.json()["images"][0]))
        outcome(case, response.status_code, error)
        assert requests.get(api.base + "/ready", timeout=10).status_code == 200, case.label
    print(f"DataCrunch endpoint: {len(cases)} cases")


def test_replicate_api(api):
    cases = marked(cog_cases())
    for case in cases:
        response = requests.post(
            api.base + "/v1/predictions",
            data=json.dumps({"version": GUIDE_VERSION, "input": {**BASE, **case.changes}}),
            headers={**AUTH, "Content-Type": "application/json", "Prefer": "wait"},
            timeout=120,
        )
        body = response.json()
        error = None
        if response.status_code >= 400:
            error = json.dumps(body)
        elif body["status"] != "succeeded":
            error = body.get("error") or json.dumps(body)
        else:
            check_image(base64.b64decode(body["output"][0].partition(",")[2]))
        outcome(case, response.status_code, error)
        assert requests.get(api.base + "/ready", timeout=10).status_code == 200, case.label
    print(f"Replicate API: {len(cases)} cases")


# ---- OpenAI's Images API and AUTOMATIC1111's ---------------------------------------------------

OPENAI_BASE = {"prompt": "a cat", "size": f"{SIZE}x{SIZE}", "num_inference_steps": 2, "seed": 1}
A1111_BASE = {"prompt": "a cat", "width": SIZE, "height": SIZE, "steps": 2, "seed": 1}


def properties(schema: dict, title: str) -> dict:
    return schema["components"]["schemas"][title]["properties"]


def openai_cases(schema: dict) -> list[Case]:
    cases = schema_cases(properties(schema, "ImageGenerationRequest"), schema)
    cases += [
        Case("size not a size", {"size": "big"}, "size", "error"),
        Case("size too large", {"size": "4096x4096"}, "size", "error"),
        Case("size not a multiple of 8", {"size": "260x260"}, "size", "error"),
        Case("size auto", {"size": "auto", "num_inference_steps": 1}, "size", "image"),
        Case("an unknown model", {"model": "dall-e-3"}, "model", "error"),
        Case("an unknown field", {"bogus": 1}, "bogus", "error"),
        Case("a replicate-only field", {"version": GUIDE_VERSION}, "version", "error"),
        Case("a transparent background", {"background": "transparent"}, "background", "error"),
        Case("stream with n 2", {"stream": True, "n": 2}, "n", "error"),
        Case("width as an extra", {"width": SIZE}, "width", "error"),  # size says it
    ]
    return cases


def edit_cases() -> list[Case]:
    """Multipart: the files are parts, the other fields text."""
    cases = [
        Case(f"image: {label}", {"image": data}, "image", expect)
        for label, data, expect in image_files()
    ]
    png = encoded(photo())
    cases += [
        Case(label, {"image": png, "mask": data}, "mask", expect)
        for label, data, expect in mask_files()
    ]
    cases += [
        Case("no image", {}, "image", "error"),
        Case("n not a number", {"image": png, "n": "seven"}, "n", "error"),
        Case("n 2.5", {"image": png, "n": "2.5"}, "n", "error"),
        Case(
            "steps NaN",
            {"image": png, "num_inference_steps": "nan"},
            "num_inference_steps",
            "error",
        ),
        Case("size of another image", {"image": png, "size": "512x512"}, "size", "error"),
        Case(
            "prompt_strength 0", {"image": png, "prompt_strength": "0"}, "prompt_strength", "error"
        ),
        Case("an unknown field", {"image": png, "bogus": "1"}, "bogus", "error"),
    ]
    return cases


def a1111_cases(schema: dict, title: str) -> list[Case]:
    cases = schema_cases(properties(schema, title), schema)
    img2img = title == "Img2ImgRequest"  # its size is the init image's: width is not read
    cases += [
        Case("width not a multiple of 8", {"width": 260}, "width", "image" if img2img else "error"),
        Case("a sampler it cannot run", {"sampler_name": "DPM adaptive"}, "sampler_name", "error"),
        Case("an unknown sampler", {"sampler_name": "nope"}, "sampler_name", "error"),
        Case("a schedule it does not have", {"scheduler": "kl_optimal"}, "scheduler", "error"),
        Case(
            "a schedule its sampler cannot run",
            {"sampler_name": "Euler a", "scheduler": "beta"},
            "scheduler",
            "error",
        ),
        Case(
            "a legacy name with its schedule",
            {"sampler_name": "DPM++ 2M SDE Karras"},
            "sampler_name",
            "image",
        ),
        Case("two styles", {"styles": ["a", "b"]}, "styles", "error"),
        Case("a style it does not have", {"styles": ["nope"]}, "styles", "error"),
        Case(
            "hires fix",  # img2img has none, as in A1111
            {"enable_hr": True, "hr_scale": 1.25, "hr_second_pass_steps": 1},
            "enable_hr",
            "error" if img2img else "image",
        ),
        Case("a script", {"script_name": "x/y/z plot"}, "script_name", "error"),
        Case("an extension's field", {"an_extensions_field": 1}, "an_extensions_field", "image"),
    ]
    if not img2img:
        hires = {"enable_hr": True, "hr_scale": 1.25}
        cases += [
            Case(
                "an upscaler it does not have",
                {**hires, "hr_upscaler": "x"},
                "hr_upscaler",
                "error",
            ),
            Case(
                "another hires checkpoint",
                {**hires, "hr_checkpoint_name": "x"},
                "hr_checkpoint_name",
                "error",
            ),
        ]
    if img2img:
        cases = [c for c in cases if c.field != "init_images"]
        b64 = base64.b64encode
        for label, data, expect in image_files():
            changes = {"init_images": [b64(data).decode()]}
            cases.append(Case(f"init_images: {label}", changes, "image", expect))
        for label, data, expect in mask_files():
            cases.append(Case(label, {"mask": b64(data).decode()}, "mask", expect))
        cases += [
            Case("two init images", {"init_images": ["a", "b"]}, "init_images", "error"),
            Case("no init images", {"init_images": []}, "init_images", "error"),
            Case("init image not base64", {"init_images": ["%%%"]}, "image", "error"),
            Case("denoising_strength 0", {"denoising_strength": 0}, "denoising_strength", "error"),
        ]
    return cases


def test_openai_generations(api):
    schema = requests.get(api.base + "/openapi.json", timeout=10).json()
    cases = marked(openai_cases(schema))
    for case in cases:
        response = requests.post(
            api.base + "/v1/images/generations",
            data=json.dumps({**OPENAI_BASE, **case.changes}),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=120,
        )
        outcome(case, response.status_code, openai_answer(response))
        assert requests.get(api.base + "/ready", timeout=10).status_code == 200, case.label
    print(f"OpenAI generations: {len(cases)} cases")


def test_openai_edits(api):
    cases = edit_cases()
    for case in cases:
        files = {k: (k + ".png", v, "image/png") for k, v in case.changes.items() if k in FILES}
        form = {k: v for k, v in case.changes.items() if k not in FILES}
        response = requests.post(
            api.base + "/v1/images/edits",
            data={**{k: str(v) for k, v in OPENAI_BASE.items() if k != "size"}, **form},
            files=files or {"unused": ("", b"")},
            headers=AUTH,
            timeout=120,
        )
        outcome(case, response.status_code, openai_answer(response))
        assert requests.get(api.base + "/ready", timeout=10).status_code == 200, case.label
    print(f"OpenAI edits: {len(cases)} cases")


FILES = ("image", "mask")


def openai_answer(response) -> str | None:
    """None for an image; else the error, which must be in OpenAI's shape."""
    body = response.json()
    if response.status_code == 200:
        check_image(base64.b64decode(body["data"][0]["b64_json"]))
        return None
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return json.dumps(body)


A1111_ROUTES = [("txt2img", "Txt2ImgRequest"), ("img2img", "Img2ImgRequest")]


@pytest.mark.parametrize(("route", "title"), A1111_ROUTES)
def test_automatic1111(api, route, title):
    schema = requests.get(api.base + "/openapi.json", timeout=10).json()
    base = dict(A1111_BASE)
    if route == "img2img":
        base["init_images"] = [base64.b64encode(encoded(photo())).decode()]
    cases = marked(a1111_cases(schema, title))
    for case in cases:
        response = requests.post(
            f"{api.base}/sdapi/v1/{route}",
            data=json.dumps({**base, **case.changes}),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=120,
        )
        body = response.json()
        error = None
        if response.status_code == 200:
            check_image(base64.b64decode(body["images"][0]))
        else:
            assert set(body) == {"error", "detail", "body", "errors"}, body
            error = json.dumps(body)
        outcome(case, response.status_code, error)
        assert requests.get(api.base + "/ready", timeout=10).status_code == 200, case.label
    print(f"AUTOMATIC1111 {route}: {len(cases)} cases")
