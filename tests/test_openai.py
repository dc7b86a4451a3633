"""OpenAI's Images API on `python -m sdxl api`, called by the official clients: `openai` 3.57.0
from PyPI in this process (max_retries=0) and `openai` 7.59.0 from npm through Node.js. A real
server on loopback, the tiny model; pixels are compared with the Replicate API's for the same
effective inputs and seed."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess

import numpy as np
import openai
import pytest
import requests
from PIL import Image
from support.api_server import KEYS, REPO, serving
from support.helpers import pixels, smooth_image

pytestmark = pytest.mark.http

JS = REPO / "tests" / "js"
SMALL = {"num_inference_steps": 3, "seed": 21}  # extra fields, under the predictor's names


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_MODEL_ALIASES": "dall-e-3,gpt-image-1"}
    with serving(tiny_weights, tmp_path_factory.mktemp("openai"), env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEYS[0], base_url=server.base + "/v1", max_retries=0)


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img


def b64_image(item) -> Image.Image:
    return decoded(base64.b64decode(item.b64_json))


def replicate_images(server, inputs: dict) -> list[Image.Image]:
    """The Replicate API's images for `inputs` (the reference every route is compared with)."""
    created = server.create_prediction(inputs)
    done = server.wait_prediction(created["id"])
    assert done["status"] == "succeeded", done
    return [decoded(base64.b64decode(uri.partition(",")[2])) for uri in done["output"]]


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(pixels(a), pixels(b))


# ---- generations ----------------------------------------------------------------------------


def test_generation_equals_the_replicate_apis_pixels(client, server):
    answer = client.images.generate(
        model="sdxl", prompt="a lighthouse", size="256x256", extra_body=SMALL
    )
    (expected,) = replicate_images(
        server, {"prompt": "a lighthouse", "width": 256, "height": 256, **SMALL}
    )
    assert same(b64_image(answer.data[0]), expected)
    assert (answer.size, answer.output_format, answer.background) == ("256x256", "png", "opaque")


def test_quality_sets_the_steps_unless_they_are_given(client, server):
    answer = client.images.generate(
        prompt="a lighthouse", size="256x256", quality="low", extra_body={"seed": 4}
    )
    inputs = {"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 4}
    (expected,) = replicate_images(server, {**inputs, "num_inference_steps": 15})
    assert same(b64_image(answer.data[0]), expected)


def test_n_above_four_runs_as_jobs_with_the_seeds_continuing(client, server):
    answer = client.images.generate(prompt="a fox", n=5, size="256x256", extra_body=SMALL)
    assert len(answer.data) == 5
    inputs = {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 3}
    first_four = replicate_images(server, {**inputs, "seed": 21, "num_outputs": 4})
    (fifth,) = replicate_images(server, {**inputs, "seed": 25})
    for got, expected in zip(answer.data, [*first_four, fifth], strict=True):
        assert same(b64_image(got), expected)


def test_url_outputs_are_absolute_and_served_without_the_key(client, server):
    plain = client.images.generate(prompt="a fox", size="256x256", extra_body=SMALL)
    answer = client.images.generate(
        prompt="a fox", size="256x256", response_format="url", extra_body=SMALL
    )
    url = answer.data[0].url
    assert url.startswith(server.base + "/outputs/")
    fetched = requests.get(url, timeout=30)  # no Authorization header
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert same(decoded(fetched.content), b64_image(plain.data[0]))


def test_librechats_dall_e_3_tool_gets_a_url_it_downloads_without_the_key(client, server):
    """LibreChat's DALL-E 3 tool, replayed: no response_format, it reads data[0].url and
    downloads it without the key, as OpenAI answers DALL-E models; other names keep b64_json."""
    body = {"model": "dall-e-3", "quality": "standard", "style": "vivid", "size": "256x256",
            "prompt": "a fox", "n": 1, **SMALL}  # fmt: skip
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    answer = requests.post(server.base + "/v1/images/generations", json=body, headers=auth,
                           timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["data"]
    assert set(item) == {"url"} and item["url"].startswith(server.base + "/outputs/")
    fetched = requests.get(item["url"], timeout=30)  # no Authorization header
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    plain = client.images.generate(prompt="a fox", size="256x256", quality="standard",
                                   extra_body=SMALL)  # fmt: skip
    assert plain.data[0].url is None and plain.data[0].b64_json  # not a DALL-E name
    assert same(decoded(fetched.content), b64_image(plain.data[0]))
    asked = client.images.generate(model="dall-e-3", prompt="a fox", size="256x256",
                                   response_format="b64_json", extra_body=SMALL)  # fmt: skip
    assert asked.data[0].url is None and same(b64_image(asked.data[0]), b64_image(plain.data[0]))


def test_jpeg_and_webp_with_their_compression(client):
    for fmt, pil in (("jpeg", "JPEG"), ("webp", "WEBP")):
        answer = client.images.generate(
            prompt="a fox",
            size="256x256",
            output_format=fmt,
            output_compression=50,
            extra_body=SMALL,
        )
        image = b64_image(answer.data[0])
        assert image.format == pil and answer.output_format == fmt
        written = json.loads(image.getexif()[0x010E])  # the parameters, in ImageDescription
        assert (written["output_format"], written["output_quality"]) == (
            "jpg" if fmt == "jpeg" else fmt,
            50,
        )


def test_an_alias_names_the_served_model(client):
    assert client.images.generate(
        model="dall-e-3", prompt="a fox", size="256x256", extra_body=SMALL
    ).data


# ---- edits ----------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_an_edit_with_an_alpha_mask_keeps_the_opaque_pixels(client):
    source = smooth_image(256, 256)
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (128, 0, 256, 256))  # the right half transparent: repainted
    answer = client.images.edit(
        image=("photo.png", png(source), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a red door",
        extra_body={"num_inference_steps": 4, "seed": 3, "prompt_strength": 0.9},
    )
    got = pixels(b64_image(answer.data[0]))
    kept = pixels(source)[:, :128]
    assert np.array_equal(got[:, :128], kept)  # the opaque half: the input's own pixels
    assert np.abs(got[:, 140:] - pixels(source)[:, 140:]).mean() > 5  # the rest: repainted


def test_an_edit_without_a_mask_is_img2img_equal_to_replicates(client, server):
    source = smooth_image(320, 256)
    answer = client.images.edit(
        image=("photo.png", png(source), "image/png"),
        prompt="a red door",
        extra_body={"num_inference_steps": 4, "seed": 8, "prompt_strength": 0.6},
    )
    assert answer.size == "320x256"
    data_uri = "data:image/png;base64," + base64.b64encode(png(source)).decode()
    (expected,) = replicate_images(
        server,
        {
            "prompt": "a red door",
            "image": data_uri,
            "num_inference_steps": 4,
            "seed": 8,
            "prompt_strength": 0.6,
        },
    )
    assert same(b64_image(answer.data[0]), expected)


def test_an_edit_of_another_size_names_both(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("photo.png", png(smooth_image(256, 256)), "image/png"),
            prompt="x",
            size="512x512",
        )
    assert caught.value.param == "size"
    assert "512x512" in caught.value.message and "256x256" in caught.value.message


def test_several_images_in_one_edit_are_refused(client):
    photo = ("photo.png", png(smooth_image(256, 256)), "image/png")
    with pytest.raises(openai.BadRequestError, match="one image file; 2 were sent"):
        client.images.edit(image=[photo, photo], prompt="x")


# ---- streaming ------------------------------------------------------------------------------


def test_streaming_sends_partial_images_then_the_image(client):
    events = list(
        client.images.generate(
            prompt="a fox",
            size="256x256",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 6, "seed": 21},
        )
    )
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert 1 <= len(partials) <= 2 and kinds[: len(partials)] == [p.type for p in partials]
    assert [p.partial_image_index for p in partials] == list(range(len(partials)))
    plain = client.images.generate(
        prompt="a fox", size="256x256", extra_body={"num_inference_steps": 6, "seed": 21}
    )
    assert same(b64_image(events[-1]), b64_image(plain.data[0]))  # previews change nothing


def test_streaming_several_images_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="stream=true makes one image"):
        client.images.generate(prompt="a fox", n=2, stream=True)


# ---- errors and models ----------------------------------------------------------------------


def test_errors_in_openais_shape(client, server):
    cases = [
        ({"model": "no-such-model"}, "model", "Supported values are: 'sdxl'"),
        ({"background": "transparent"}, "background", "SDXL's images are opaque"),
        ({"size": "12x12"}, "size", "out of range"),
        ({"n": 11}, "n", "out of range"),
        ({"num_inference_steps": "many"}, "num_inference_steps", "must be an integer"),
        ({"bogus_field": 1}, "bogus_field", "is not an input"),
    ]
    for body, param, words in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="a fox", extra_body=body)
        assert caught.value.param == param and words in caught.value.message, body
    wrong = openai.OpenAI(api_key="not-the-key", base_url=server.base + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="a fox")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    for method, path, status in (
        ("GET", "/v1/images/nothing", 404),
        ("PUT", "/v1/images/edits", 405),
    ):
        answer = requests.request(
            method, server.base + path, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10
        )
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_models_list_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["sdxl"]
    assert client.models.retrieve("gpt-image-1").id == "gpt-image-1"


def test_the_javascript_client_generates(server, tmp_path):
    assert (JS / "node_modules" / "openai").is_dir(), "run `npm ci --prefix tests/js`"
    script = tmp_path / "generate.cjs"
    script.write_text(
        """
const { OpenAI } = require("openai");
const client = new OpenAI({apiKey: process.env.KEY, baseURL: process.env.BASE, maxRetries: 0});
client.images.generate({model: "sdxl", prompt: "a fox", size: "256x256",
                        num_inference_steps: 3, seed: 21})
  .then((answer) => console.log(answer.data[0].b64_json))
  .catch((err) => { console.error(err.message); process.exit(1); });
"""
    )
    env = {**os.environ, "KEY": KEYS[0], "BASE": server.base + "/v1"}
    env["NODE_PATH"] = str(JS / "node_modules")
    done = subprocess.run(
        ["node", str(script)], cwd=JS, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    image = decoded(base64.b64decode(done.stdout.strip()))
    (expected,) = replicate_images(
        server, {"prompt": "a fox", "width": 256, "height": 256, **SMALL}
    )
    assert same(image, expected)
