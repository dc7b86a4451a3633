"""The web UI files of a training made on Replicate's trainings API (`python -m sdxl api`, the
official Python client) are named after its destination and its version's first 8
characters, so that two trainings' files can share AUTOMATIC1111's or ComfyUI's folders; the
reference's files keep their names; a `name` the caller gives is kept, a wrong one is a 422
naming it; a changed `token_string` alone trains that word. A real server on loopback with the
tiny model."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import replicate
import requests
from support.api_server import GUIDE_VERSION, serving
from support.archives import photos, write_zip

pytestmark = pytest.mark.http

KEY = "carol-key"
PATH = f"/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings"
QUICK = {"resolution": 256, "train_batch_size": 1, "lora_rank": 4, "max_train_steps": 2}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    with serving(tiny_weights, folder, {"SDXL_API_KEYS": f"carol:{KEY}"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def carol(server):
    client = replicate.Client(api_token=KEY, base_url=server.base)
    client.models.create(owner="carol", name="pets.v2", visibility="private", hardware="gpu")
    return client


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("photos") / "photos.zip", photos(2, caption=None))


def call(server, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return requests.request(method, server.base + path, headers=headers, timeout=60, **kwargs)


def test_the_web_ui_files_carry_the_destination_and_the_version(server, carol, zipped):
    with open(zipped, "rb") as archive:
        training = carol.trainings.create(
            model="stability-ai/sdxl",
            version=GUIDE_VERSION,
            input={"input_images": archive, "token_string": "ZWX", **QUICK},
            destination="carol/pets.v2",
        )
    name = f"carol-pets.v2-{training.id[:8]}"
    assert training.input["name"] == name  # the training's input says what it was given
    while training.status not in ("succeeded", "failed", "canceled"):
        training.reload()
    assert training.status == "succeeded", training.error
    assert training.output["version"] == f"carol/pets.v2:{training.id}"
    assert "caption: a photo of ZWX," in training.logs  # the prefix followed the token
    weights = call(server, "GET", f"/v1/trainings/{training.id}/weights")
    assert weights.status_code == 200, weights.text
    with tarfile.open(fileobj=io.BytesIO(weights.content)) as tar:
        names = set(tar.getnames())
        special = json.loads(tar.extractfile("special_params.json").read())
    assert names == {
        "lora.safetensors",  # the reference's, which replicate_weights loads, unchanged
        "embeddings.pti",
        "special_params.json",
        f"webui/{name}.safetensors",
        "webui/embeddings.safetensors",
        f"webui/embeddings/{name}_ZWX.safetensors",
    }
    assert special == {"ZWX": "<s0><s1>"}


def test_a_name_given_is_kept_and_a_wrong_one_is_a_422_naming_it(server, carol):
    body = {"destination": "carol/pets.v2", "input": {"input_images": "https://x/a.zip"}}
    wrong = call(server, "POST", PATH, json={**body, "input": {**body["input"], "name": "a b"}})
    assert wrong.status_code == 422, wrong.text
    assert [p["field"] for p in wrong.json()["invalid_fields"]] == ["input.name"]
    given = {**body, "input": {**body["input"], "name": "my-dog"}}
    made = call(server, "POST", PATH, json=given)
    assert made.status_code == 201 and made.json()["input"]["name"] == "my-dog"
