"""One set of rules under every API: the same broken rule reads the same on the Cog predictor,
the Replicate API and the DataCrunch endpoint (apart from the field's name), and a cap is
checked only for an input that applies. A real server with low caps, and the predictor."""

from __future__ import annotations

import base64

import pytest
import requests
from support.api_server import KEYS, serving

from sdxl.config import COG_INPUTS
from sdxl.errors import InputError

pytestmark = pytest.mark.http

CAPS = {"SDXL_MAX_STEPS": "20", "SDXL_MAX_PROMPT_CHARS": "300", "SDXL_MAX_PIXELS": "131072"}
SMALL = {"width": 256, "height": 256, "num_inference_steps": 2, "seed": 1}
GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": KEYS[0], **CAPS}
    with serving(tiny_weights, tmp_path_factory.mktemp("boundary"), env) as srv:
        yield srv


def replicate_problems(server, inputs: dict) -> dict[str, str]:
    body = {"version": GUIDE_VERSION, "input": {"prompt": "a cat", **SMALL, **inputs}}
    answer = server.api("POST", "/v1/predictions", body)
    assert answer.status_code == 422, answer.text
    return {f["field"]: f["description"] for f in answer.json()["invalid_fields"]}


def datacrunch_problems(server, fields: dict) -> dict[str, str]:
    answer = server.post({"prompt": "a cat", **SMALL, **fields})
    assert answer.status_code == 422, answer.text
    return {item["field"]: item["msg"] for item in answer.json()["detail"]}


def test_a_long_prompt_reads_the_same_on_both_apis(server):
    text = "x" * 400
    expected = "prompt has 400 characters; the limit is 300 (SDXL_MAX_PROMPT_CHARS)"
    assert replicate_problems(server, {"prompt": text}) == {"input.prompt": expected}
    assert datacrunch_problems(server, {"prompt": text}) == {"prompt": expected}


def test_a_rule_reads_the_same_apart_from_the_fields_name(server):
    for_replicate = replicate_problems(server, {"num_outputs": 9, "width": 5000})
    for_datacrunch = datacrunch_problems(server, {"num_images_per_prompt": 9, "width": 5000})
    assert for_replicate == {
        "input.num_outputs": "num_outputs=9 is out of range; use 1..4",
        "input.width": "width=5000 is out of range; use 256..2048",
    }
    assert for_datacrunch == {
        "num_images_per_prompt": "num_images_per_prompt=9 is out of range; use 1..4",
        "width": "width=5000 is out of range; use 256..2048",
    }


def test_the_pixel_cap_answers_at_the_boundary_on_both_apis(server):
    expected = (
        "width x height = 512x512 is 262144 pixels; the limit is 131072 (SDXL_MAX_PIXELS); "
        "lower width or height"
    )
    assert replicate_problems(server, {"width": 512, "height": 512}) == {"input.width": expected}
    assert datacrunch_problems(server, {"width": 512, "height": 512}) == {"width": expected}


def test_refiner_steps_are_capped_only_when_the_refiner_runs(server):
    # DataCrunch's default num_inference_steps_refiner is 50, over the cap of 20: it does not
    # apply without the refiner, so it is not refused.
    answer = server.post({"prompt": "a cat", **SMALL})
    assert answer.status_code == 200, answer.text
    assert base64.b64decode(answer.json()["images"][0])[:4] == b"\x89PNG"
    assert datacrunch_problems(server, {"refiner": True}) == {
        "num_inference_steps_refiner": "num_inference_steps_refiner=50 is over this server's "
        "limit of 20 (SDXL_MAX_STEPS); lower it"
    }
    # The same on the Replicate API: refine_steps applies only to base_image_refiner.
    body = {"prompt": "a cat", **SMALL, "refine_steps": 50}
    created = server.create_prediction(body)
    assert server.wait_prediction(created["id"])["status"] == "succeeded"
    problems = replicate_problems(server, {"refine_steps": 50, "refine": "base_image_refiner"})
    assert problems == {
        "input.refine_steps": "refine_steps=50 is over this server's limit of 20 "
        "(SDXL_MAX_STEPS); lower it"
    }


def test_a_model_rule_fails_the_prediction_and_is_a_422_on_the_synchronous_api(server):
    created = server.create_prediction({"prompt": "a cat", **SMALL, "width": 260})
    ended = server.wait_prediction(created["id"])
    assert ended["status"] == "failed"
    assert ended["error"] == "width=260 is not a multiple of 8; use 256 or 264"
    assert datacrunch_problems(server, {"width": 260}) == {
        "width": "width=260 is not a multiple of 8; use 256 or 264"
    }
    ready = requests.get(server.base + "/ready", timeout=10)
    assert ready.status_code == 200 and server.post({"prompt": "a cat", **SMALL}).ok


def test_the_predictor_names_the_cap_the_same_way(tiny_weights, monkeypatch):
    from predict import Predictor

    monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("SDXL_MAX_PROMPT_CHARS", "300")
    predictor = Predictor()
    predictor.setup()
    inputs = {name: spec.default for name, spec in COG_INPUTS.items()}
    with pytest.raises(InputError) as caught:
        predictor.run(**{**inputs, **SMALL, "prompt": "x" * 400})
    assert str(caught.value) == (
        "prompt has 400 characters; the limit is 300 (SDXL_MAX_PROMPT_CHARS)"
    )
