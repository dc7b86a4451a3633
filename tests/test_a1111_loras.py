"""AUTOMATIC1111's prompt language and LoRA tags over HTTP, on a real server (tiny model) whose
SDXL_LORA_DIR holds a random LoRA: weights change the image and a prompt whose weights are all
1.0 gives the plain text's pixels; a tag applies its LoRA wherever it stands, and leaves nothing
for the next request; an unknown name is a 422 naming the tag; /loras lists the caller's LoRAs
without a server path, and /refresh-loras answers null."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image
from support.api_server import KEYS, serving
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
