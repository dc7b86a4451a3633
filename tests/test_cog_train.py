"""Cog's own server in train mode (`python -m sdxl serve --train`: coglet with train.py) over
HTTP, as Replicate runs a training: PUT /trainings/<id> answers the trained tar; coglet refuses
an input out of bounds from the schema we ship; a training cancelled over HTTP stops at its
next step, and the server takes the next training."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
import requests
from support.archives import photos, write_zip
from support.cog_server import Receiver, start_server

pytestmark = pytest.mark.http

SMALL = {"resolution": 256, "train_batch_size": 2, "lora_rank": 4, "seed": 1, "lr_warmup_steps": 0}


def data_uri(path) -> str:
    return "data:application/zip;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    srv = start_server(tiny_weights, tmp_path_factory.mktemp("cog-train"), "--train")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("photos") / "photos.zip", photos(3))


def test_a_training_over_http_answers_the_trained_tar(server, archive):
    inputs = {"input_images": data_uri(archive), "max_train_steps": 3, **SMALL}
    body = {"input": {**inputs, "name": "my-dog", "verbose": False}}
    answer = requests.put(server.base + "/trainings/t-one", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["status"] == "succeeded", found
    header, _, payload = found["output"]["weights"].partition(",")
    assert header.startswith("data:")
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(payload))) as tar:
        names = set(tar.getnames())
        special = json.loads(tar.extractfile("special_params.json").read())
    assert {"lora.safetensors", "embeddings.pti", "webui/my-dog.safetensors"} <= names
    assert "webui/embeddings/my-dog_TOK.safetensors" in names
    assert special == {"TOK": "<s0><s1>"}
    # Not verbose: the log has the images, the seed and the web UI files, no line per step.
    logs = found["logs"]
    assert "3 images of TOK" in logs and ", seed 1" in logs and "<lora:my-dog:1>" in logs
    assert "step 1/3 loss" not in logs
    assert server.settles_ready()


def test_a_wrong_name_fails_the_training_naming_it(server, archive):
    body = {"input": {"input_images": data_uri(archive), **SMALL, "name": "my/dog"}}
    answer = requests.put(server.base + "/trainings/t-name", json=body, timeout=60)
    found = answer.json()
    assert found["status"] == "failed", found
    assert "name='my/dog' is not a file name" in found["error"]


def test_coglet_refuses_an_input_out_of_bounds_from_our_schema(server, archive):
    body = {"input": {"input_images": data_uri(archive), **SMALL, "lora_rank": 0}}
    answer = requests.put(server.base + "/trainings/t-bounds", json=body, timeout=60)
    assert answer.status_code == 422
    assert "lora_rank" in json.dumps(answer.json())


def test_a_training_cancelled_over_http_stops_and_the_next_one_runs(server, archive):
    receiver = Receiver()
    body = {
        "input": {"input_images": data_uri(archive), "max_train_steps": 5000, **SMALL},
        "webhook": receiver.url + "/hook",
    }
    headers = {"Prefer": "respond-async"}
    answer = requests.put(server.base + "/trainings/t-long", json=body, headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text

    def events():
        return [json.loads(r[3]) for r in receiver.requests if r[1] == "/hook"]

    receiver.wait_for(lambda _: any("step 2/" in (e.get("logs") or "") for e in events()), 120)
    cancel = requests.post(server.base + "/trainings/t-long/cancel", timeout=30)
    assert cancel.status_code == 200
    receiver.wait_for(lambda _: any(e["status"] == "canceled" for e in events()), 120)
    ended = next(e for e in events() if e["status"] == "canceled")
    assert "step 5000/5000" not in (ended.get("logs") or "")
    assert "checkpoint at step" in (ended.get("logs") or "")  # it can go on from there
    assert server.settles_ready(60)
    again = {"input": {"input_images": data_uri(archive), "max_train_steps": 2, **SMALL}}
    after = requests.put(server.base + "/trainings/t-after", json=again, timeout=300)
    assert after.json()["status"] == "succeeded"
