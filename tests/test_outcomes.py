"""One outcome for every API: a job that runs out of memory, or fails inside, on one server,
asked through DataCrunch's endpoint, OpenAI's, AUTOMATIC1111's and Replicate's. Each answers
in its own shape with the code its docs give (out of memory: 422, OpenAI's 400, Replicate's
failed prediction; an internal error: 500 naming its class, never its text), the metrics
count the kind, and the server keeps serving. And a training whose archive is a private URL
fails as a download refused by the server's URL rules."""

from __future__ import annotations

import re

import pytest
import requests
from support.api_server import GENERATE, GUIDE_VERSION, KEYS, Server

# Injected into the server process: the UNet runs out of memory at 320x320 (40x40 latents)
# and fails inside at 384x384, as it would on a GPU; every other size runs.
FAULTS = """
import torch
from diffusers import UNet2DConditionModel
_forward = UNet2DConditionModel.forward
def _faulty(self, sample, *args, **kwargs):
    if sample.shape[-1] == 40:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if sample.shape[-1] == 48:
        raise RuntimeError("secret internal detail")
    return _forward(self, sample, *args, **kwargs)
UNet2DConditionModel.forward = _faulty
"""
STEPS = 2


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_ALLOW_PRIVATE_URLS": "0"}  # production's URL rule
    srv = Server(tiny_weights, tmp_path_factory.mktemp("outcomes"), env, preamble=FAULTS)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(server, path: str, body: dict, **headers) -> requests.Response:
    return server.api("POST", path, body, headers=headers)


def ask_everywhere(server, size: int) -> dict[str, requests.Response]:
    prompt = {"prompt": "a cat"}
    return {
        "datacrunch": post(
            server,
            GENERATE,
            {**prompt, "width": size, "height": size, "num_inference_steps": STEPS},
        ),
        "openai": post(
            server,
            "/v1/images/generations",
            {**prompt, "size": f"{size}x{size}", "num_inference_steps": STEPS},
        ),
        "a1111": post(
            server, "/sdapi/v1/txt2img", {**prompt, "width": size, "height": size, "steps": STEPS}
        ),
        "replicate": post(
            server,
            "/v1/models/stability-ai/sdxl/predictions",  # the served model's latest version
            {"input": {**prompt, "width": size, "height": size, "num_inference_steps": STEPS}},
            Prefer="wait=60",
        ),
    }


def failures(server, kind: str) -> float:
    metrics = requests.get(server.base + "/metrics", timeout=10).text
    (count,) = re.findall(rf'^sdxl_job_failures_total{{kind="{kind}"}} (\S+)$', metrics, re.M)
    return float(count)


def test_out_of_memory_is_the_requests_fault_on_every_api(server):
    answers = ask_everywhere(server, 320)
    lower = re.compile(r"out of memory.*at 320x320.*lower width", re.S)
    datacrunch, openai, a1111, replicate = answers.values()
    assert datacrunch.status_code == 422 and lower.search(datacrunch.text), datacrunch.text
    assert openai.status_code == 400, openai.text
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert lower.search(openai.json()["error"]["message"])
    assert a1111.status_code == 422 and lower.search(a1111.text), a1111.text
    prediction = replicate.json()
    assert prediction["status"] == "failed" and lower.search(prediction["error"]), prediction
    assert failures(server, "out_of_memory") == 4
    after = {"prompt": "a cat", "num_inference_steps": STEPS, "width": 256, "height": 256}
    assert post(server, GENERATE, after).status_code == 200  # the server goes on serving


def test_an_internal_failure_is_a_500_that_tells_nothing_inside(server):
    answers = ask_everywhere(server, 384)
    for api in ("datacrunch", "openai", "a1111"):
        answer = answers[api]
        assert answer.status_code == 500, (api, answer.text)
        assert "secret internal detail" not in answer.text
        assert "generation failed (RuntimeError, job" in answer.text, (api, answer.text)
    prediction = answers["replicate"].json()
    assert prediction["status"] == "failed"
    assert prediction["error"].startswith("generation failed (RuntimeError, job")
    assert "secret internal detail" not in prediction["error"]
    assert failures(server, "internal") == 4
    assert "secret internal detail" in server.log()  # for the operator, in the server's log


def test_a_trainings_archive_on_a_private_address_is_refused(server):
    """This server keeps the production rule for URLs (no SDXL_ALLOW_PRIVATE_URLS): a training
    whose archive is on a loopback address fails, naming the input and the rule, and nothing
    is fetched."""
    owner = server.api("GET", "/v1/account").json()["username"]
    assert post(server, "/v1/models", {"owner": owner, "name": "mine"}).status_code == 201
    created = post(
        server,
        f"/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings",
        {"destination": f"{owner}/mine", "input": {"input_images": "http://127.0.0.1:9/a.zip"}},
    )
    assert created.status_code == 201, created.text
    training = created.json()
    while training["status"] not in ("succeeded", "failed", "canceled"):
        training = server.api("GET", f"/v1/trainings/{training['id']}").json()
    assert training["status"] == "failed", training
    assert training["error"].startswith("input_images: http://127.0.0.1:9/a.zip could not be")
    assert "private or local address, refused" in training["error"]
