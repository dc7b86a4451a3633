"""AUTOMATIC1111's prompt language and LoRA tags over HTTP, on a real server (tiny model) whose
SDXL_LORA_DIR holds a random LoRA: weights change the image and a prompt whose weights are all
1.0 gives the plain text's pixels; a tag applies its LoRA wherever it stands, and leaves nothing
for the next request; an unknown name is a 422 naming the tag, and on Replicate's, DataCrunch's and
OpenAI's APIs an unknown name or a trainer's tar in `loras` is refused at create (nothing
stored); each PNG's infotext keeps the tag in its prompt and gives A1111's `Lora hashes`;
/loras lists the caller's LoRAs without a server path, and /refresh-loras answers null."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct

import numpy as np
import pytest
import requests
from PIL import Image
from support.api_server import GUIDE_VERSION, KEYS, serving
from support.helpers import pixels
from support.loras import save_safetensors

from sdxl.builders.random_lora import random_kohya_lora

pytestmark = pytest.mark.http

SMALL = {"width": 256, "height": 256, "steps": 3, "seed": 7, "cfg_scale": 7.0}
AUTH = ("anyone", KEYS[0])


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("a1111-loras")
    lora = random_kohya_lora(models.base.unet, seed=5, std=0.2)
    save_safetensors(folder / "painted.safetensors", lora)
    return folder


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory, lora_dir):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_LORA_DIR": str(lora_dir)}
    with serving(tiny_weights, tmp_path_factory.mktemp("a1111-lora-server"), env) as srv:
        yield srv


def txt2img(server, prompt: str, **extra) -> requests.Response:
    body = {"prompt": prompt, "sampler_name": "Euler", **SMALL, **extra}
    return requests.post(server.base + "/sdapi/v1/txt2img", json=body, auth=AUTH, timeout=300)


def image(server, prompt: str, **extra) -> np.ndarray:
    answer = txt2img(server, prompt, **extra)
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))) as img:
        return pixels(img)


def test_weights_are_read_and_tags_apply_their_lora(server):
    plain = image(server, "a cat")
    assert np.array_equal(image(server, "a (cat:1.0)"), plain)
    assert not np.array_equal(image(server, "a (cat:1.5)"), plain)
    tagged = image(server, "<lora:painted:0.8>a cat")
    assert np.abs(tagged.astype(int) - plain.astype(int)).max() > 10
    assert np.array_equal(image(server, "a cat<lora:painted:0.8>"), tagged)
    assert np.array_equal(image(server, "a cat"), plain)  # nothing left by the stack


def test_an_unknown_lora_is_a_422_naming_the_tag(server):
    answer = txt2img(server, "a cat <lora:missing:0.5>")
    assert answer.status_code == 422, answer.text
    assert "<lora:missing:0.5>" in answer.text and "SDXL_LORA_DIR" in answer.text
    answer = txt2img(server, "a cat <lora:painted:9>")
    assert answer.status_code == 422 and "<lora:painted:9>" in answer.text


def test_the_loras_list_names_the_files_and_no_server_path(server, lora_dir):
    listed = requests.get(server.base + "/sdapi/v1/loras", auth=AUTH, timeout=10)
    assert listed.status_code == 200
    rows = listed.json()
    assert {"name": "painted", "alias": "painted", "path": "models/Lora/painted.safetensors"} in [
        {k: row[k] for k in ("name", "alias", "path")} for row in rows
    ]
    assert str(lora_dir) not in json.dumps(rows)
    save_safetensors(lora_dir / "later.safetensors", {})  # an empty file's header
    refreshed = requests.post(server.base + "/sdapi/v1/refresh-loras", auth=AUTH, timeout=10)
    assert refreshed.status_code == 200 and refreshed.json() is None
    names = [
        row["name"]
        for row in requests.get(server.base + "/sdapi/v1/loras", auth=AUTH, timeout=10).json()
    ]
    assert "later" in names


def prediction_ids(server) -> list[str]:
    answer = server.api("GET", "/v1/predictions")
    assert answer.status_code == 200, answer.text
    return [row["id"] for row in answer.json()["results"]]


def test_unknown_loras_are_refused_at_create_on_every_api(server):
    before = prediction_ids(server)
    unknown = {"prompt": "a cat", "loras": "painted:0.5, missing:0.5"}
    for path, body in [
        ("/v1/predictions", {"version": GUIDE_VERSION, "input": unknown}),
        ("/v1/models/stability-ai/sdxl/predictions", {"input": unknown}),
    ]:
        answer = server.api("POST", path, body)
        assert answer.status_code == 422, answer.text
        assert "'missing:0.5' names no LoRA here" in answer.text and "SDXL_LORA_DIR" in answer.text
    tar = {"prompt": "a cat", "loras": "https://example.com/trained_model.tar:0.5"}
    answer = server.api("POST", "/v1/predictions", {"version": GUIDE_VERSION, "input": tar})
    assert answer.status_code == 422 and "replicate_weights" in answer.text, answer.text
    assert prediction_ids(server) == before  # nothing stored, nothing to fail later
    answer = server.post({"prompt": "a cat", "loras": "missing"})  # DataCrunch
    assert answer.status_code == 422 and "'missing' names no LoRA here" in answer.text
    answer = requests.post(
        server.base + "/v1/images/generations",
        json={"prompt": "a cat", "loras": "missing:0.3"},
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        timeout=60,
    )
    assert answer.status_code == 400 and "'missing:0.3' names no LoRA here" in answer.text


def a1111_short_hash(path) -> str:
    """A1111's LoRA short hash, computed here: the sha256 of the bytes after the safetensors
    header, its first 12 hex digits."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + size :]).hexdigest()[:12]


def test_the_infotext_keeps_the_tag_and_gives_the_lora_hash(server, lora_dir):
    answer = txt2img(server, "<lora:painted:0.8>a cat", negative_prompt="ugly")
    assert answer.status_code == 200, answer.text
    short = a1111_short_hash(lora_dir / "painted.safetensors")
    with Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))) as img:
        text = img.info["parameters"]
    lines = text.splitlines()
    assert lines[:2] == ["<lora:painted:0.8>a cat", "Negative prompt: ugly"]
    assert f'Lora hashes: "painted: {short}", Version: ' in lines[2]
    info = json.loads(answer.json()["info"])
    assert info["extra_generation_params"]["Lora hashes"] == f"painted: {short}"
    assert info["prompt"] == "<lora:painted:0.8>a cat" and info["infotexts"] == [text]
