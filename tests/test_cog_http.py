"""The real Cog prediction server (`python -m sdxl serve`, coglet) over HTTP, tiny model."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from support.cog_server import (
    REPO,
    Receiver,
    data_uri,
    decode_output,
    image_from_bytes,
    output_bytes,
    png_bytes,
    start_server,
)
from support.helpers import assert_same_image, generator, half_mask, pixels, smooth_image

from sdxl.config import COG_INPUTS

pytestmark = pytest.mark.http
SMALL = {"width": 256, "height": 256, "num_inference_steps": 4}
VALID = {"prompt": "a photo of a cat", "seed": 21, "apply_watermark": False, **SMALL}


@pytest.fixture(scope="module")
def server(cog_server):
    return cog_server


@pytest.fixture(scope="module")
def fresh_bytes(cog_server):
    """The first prediction of this module (the server may have answered others' bad inputs
    before): later ones must equal it byte for byte."""
    return output_bytes(cog_server.predict(**VALID))


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


def test_health_starting_then_ready(server):
    assert server.statuses[-1] == "READY"
    assert "STARTING" in server.statuses, server.statuses


def test_openapi_is_the_schema_file_with_every_input(server):
    published = requests.get(server.base + "/openapi.json", timeout=10).json()
    on_disk = json.loads((REPO / ".cog" / "openapi_schema.json").read_text())
    assert published == on_disk
    props = published["components"]["schemas"]["Input"]["properties"]
    assert sorted(props, key=lambda n: props[n]["x-order"]) == list(COG_INPUTS)
    for name, spec in COG_INPUTS.items():
        if spec.ge is not None:
            assert (props[name]["minimum"], props[name]["maximum"]) == (spec.ge, spec.le), name


def test_pixels_equal_diffusers(server, reference, fresh_bytes):
    base, _ = reference
    expected = base(
        prompt="a photo of a cat",
        width=256,
        height=256,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=generator(21),
    ).images[0]
    got = image_from_bytes(fresh_bytes[0])
    assert_same_image(got, expected)


MODES = [("txt2img", {}), ("img2img", {"image"}), ("inpaint", {"image", "mask"})]
REFINES = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize(("mode", "files"), MODES, ids=[m for m, _ in MODES])
def test_each_mode_and_refine(server, mode, files, refine):
    inputs = {**VALID, "refine": refine, "refine_steps": 2, "num_outputs": 2}
    if "image" in files:
        inputs["image"] = data_uri(smooth_image(320, 256))
        inputs["prompt_strength"] = 0.9
    if "mask" in files:
        inputs["mask"] = data_uri(half_mask(320, 256))
    response = server.predict(**inputs)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "succeeded", body.get("error")
    images = [decode_output(uri) for uri in body["output"]]
    assert len(images) == 2
    assert {img.size for img in images} == {(256, 256) if mode == "txt2img" else (320, 256)}
    assert {img.format for img in images} == {"PNG"}
    assert body["metrics"]["mode"] == mode and body["metrics"]["seeds"] == [21, 22]
    assert body["metrics"]["predict_time"] > 0


@pytest.mark.parametrize(("fmt", "pil"), [("webp", "WEBP"), ("jpg", "JPEG")])
def test_output_formats(server, fmt, pil):
    body = server.predict(**VALID, output_format=fmt).json()
    assert body["output"][0].startswith(f"data:image/{'jpeg' if fmt == 'jpg' else fmt}")
    assert decode_output(body["output"][0]).format == pil


def test_seed_reproduces_and_progress_is_logged(server, fresh_bytes):
    response = server.predict(**VALID)
    assert output_bytes(response) == fresh_bytes
    logs = response.json()["logs"]
    for step in range(1, 5):
        assert f"base step {step}/4" in logs
    assert "seeds=[21]" in logs


def test_random_seed_is_returned(server):
    body = server.predict(**{k: v for k, v in VALID.items() if k != "seed"}).json()
    (seed,) = body["metrics"]["seeds"]
    again = server.predict(**{**VALID, "seed": seed}).json()
    assert again["output"] == body["output"]


def test_coglet_itself_validates_types_no_proxy_in_front(server):
    """`serve` runs coglet as a Cog image does: a numeric string or a null is coglet's 422
    (the Replicate API of `python -m sdxl api` accepts them, see test_replicate_api.py)."""
    for name, value in (("high_noise_frac", "0.8"), ("refine_steps", "2"), ("seed", None)):
        response = server.predict(**{**VALID, name: value})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] == name


def _truncated_png() -> str:
    payload = png_bytes(smooth_image(256, 256))
    return "data:image/png;base64," + base64.b64encode(payload[: len(payload) // 2]).decode()


INVALID = [
    ({"num_outputs": 9}, "num_outputs"),
    ({"scheduler": "nope"}, "scheduler"),
    ({"width": "abc"}, "width"),
    ({"seed": -1}, "seed"),
    ({"image": "/etc/hostname"}, "image"),
    ({"width": 1004}, "width=1004 is not a multiple of 8"),
    ({"image": "data:image/png;base64,aGVsbG8="}, "image is not a readable image"),
    ({"image": "TRUNCATED"}, "image is not a readable image"),
    ({"image": "data:image/png;base64,iVBORw0KGgo=x"}, "image"),
    ({"mask": "MASK"}, "mask was given without image"),
    ({"image": "IMAGE", "mask": "WIDE_MASK"}, "mask is 512x256"),
    ({"image": "SMALL_IMAGE"}, "image is 128x128"),
    ({"refine": "expert_ensemble_refiner", "high_noise_frac": 1}, "high_noise_frac=1"),
    ({"image": "IMAGE", "prompt_strength": 0.1}, "prompt_strength=0.1"),
    ({"controlnet_1": "canny"}, "controlnet_1_image is missing"),
    ({"controlnet_2": "scribble"}, "controlnet_2"),
    ({"controlnet_1": "canny", "controlnet_1_image": "/etc/hostname"}, "controlnet_1_image"),
    ({"controlnet_1": "canny", "controlnet_1_image": "IMAGE", "controlnet_1_end": 0}, "not before"),
]
FILES = {
    "TRUNCATED": _truncated_png,
    "MASK": lambda: data_uri(half_mask(256, 256)),
    "WIDE_MASK": lambda: data_uri(half_mask(512, 256)),
    "IMAGE": lambda: data_uri(smooth_image(256, 256)),
    "SMALL_IMAGE": lambda: data_uri(smooth_image(128, 128)),
}


def test_invalid_inputs_are_named_and_leave_the_server_clean(server, fresh_bytes):
    for bad, expected in INVALID:
        bad = {k: FILES[v]() if isinstance(v, str) and v in FILES else v for k, v in bad.items()}
        response = server.predict(**{**VALID, **bad})
        if response.status_code == 422:
            detail = response.json()["detail"]
            assert any(d["loc"][-1] == expected for d in detail), (bad.keys(), detail)
        else:
            body = response.json()
            assert body["status"] == "failed", (bad.keys(), body)
            assert expected in body["error"], body["error"]
        assert server.settles_ready()
    assert output_bytes(server.predict(**VALID)) == fresh_bytes


def test_a_controlnet_prediction_returns_its_map_first(server):
    """A canny unit through Cog's own server: the map (OpenCV's Canny of the image at the
    output size) comes first, then the image; the seeds metric counts only the images."""
    import cv2
    from PIL import ImageDraw

    source = smooth_image(256, 256)
    ImageDraw.Draw(source).rectangle((40, 60, 150, 200), fill=(250, 250, 250))  # edges
    inputs = {**VALID, "controlnet_1": "canny", "controlnet_1_image": data_uri(source)}
    body = server.predict(**inputs, canny_low_threshold=10, return_control_maps=True).json()
    assert body["status"] == "succeeded", body.get("error")
    control, image = (decode_output(uri) for uri in body["output"])
    edges = cv2.Canny(np.asarray(source), 10, 200)
    assert np.array_equal(pixels(control)[..., 0], edges) and edges.any()
    assert image.size == (256, 256) and body["metrics"]["seeds"] == [21]


def test_image_from_loopback_url(server, receiver):
    source = smooth_image(256, 256)
    receiver.files["/photo.png"] = ("image/png", png_bytes(source))
    by_url = server.predict(**VALID, image=receiver.url + "/photo.png", prompt_strength=0.6)
    by_data = server.predict(**VALID, image=data_uri(source), prompt_strength=0.6)
    assert output_bytes(by_url) == output_bytes(by_data)


def test_async_cancel_midway_leaves_nothing_behind(server, fresh_bytes, receiver):
    slow = {**VALID, "width": 512, "height": 512, "num_inference_steps": 200}
    response = requests.post(
        server.base + "/predictions",
        json={
            "input": slow,
            "webhook": receiver.url + "/hook",
            "webhook_events_filter": ["start", "logs", "completed"],
        },
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    prediction_id = response.json()["id"]
    receiver.wait_for(
        lambda reqs: any(b"base step 2/" in body for _, p, _, body in reqs if p == "/hook")
    )
    cancel = requests.post(f"{server.base}/predictions/{prediction_id}/cancel", timeout=10)
    assert cancel.status_code == 200
    receiver.wait_for(lambda reqs: any(b'"canceled"' in body for _, _, _, body in reqs))
    assert server.health() in ("READY", "BUSY")
    assert output_bytes(server.predict(**VALID)) == fresh_bytes
    roots = list(server.tmpdir.glob("sdxl-outputs-*"))
    assert len(roots) == 1 and len(list(roots[0].iterdir())) == 1  # only the last outputs


def test_webhook_gets_the_finished_prediction_and_progress(server, receiver):
    response = requests.post(
        server.base + "/predictions",
        json={
            "input": {**VALID, "num_outputs": 2},
            "webhook": receiver.url + "/done",
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        },
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202
    receiver.wait_for(lambda reqs: any(b'"succeeded"' in b for _, _, _, b in reqs))
    bodies = receiver.json_bodies("/done")
    final = [b for b in bodies if b["status"] == "succeeded"]
    assert len(final) == 1 and len(final[0]["output"]) == 2
    assert {decode_output(uri).size for uri in final[0]["output"]} == {(256, 256)}
    assert any(b["status"] == "processing" for b in bodies)


def test_outputs_are_uploaded_once_each(tiny_weights, tmp_path, receiver):
    srv = start_server(tiny_weights, tmp_path, "--upload-url", receiver.url + "/upload/")
    try:
        body = srv.predict(**{**VALID, "num_outputs": 2}).json()
    finally:
        srv.stop()
    assert body["status"] == "succeeded", body.get("error")
    puts = [(p, b) for m, p, _, b in receiver.requests if m == "PUT"]
    assert len(puts) == 2, receiver.summary()
    assert len({p for p, _ in puts}) == 2
    for url in body["output"]:
        assert url.startswith(receiver.url + "/upload/"), url
        (payload,) = [b for p, b in puts if url.endswith(p)]
        img = image_from_bytes(payload)
        assert img.size == (256, 256)


def _replicate_guide_bodies(image_url: str, mask_url: str) -> list[dict]:
    """The request bodies of the Replicate guide (shared/seeds). Adapted: image URLs point at
    loopback, the step counts are divided by ten so the CPU suite stays fast, and the numbers
    the guide's JavaScript sends as strings ('0.8', '20') are numbers, as Cog's server wants
    them (the guide's calls verbatim go to the Replicate API, in test_replicate_api.py)."""
    negative = "ugly, soft, blurry, out of focus, low quality, garish, distorted, disfigured"
    portrait = {
        "prompt": "A studio portrait photo of a cat",
        "negative_prompt": negative,
        "width": 1024,
        "height": 1024,
        "num_inference_steps": 5,
        "scheduler": "DDIM",
        "guidance_scale": 7.5,
    }
    return [
        {"prompt": "An astronaut riding a rainbow unicorn", "num_inference_steps": 5},
        {**portrait, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.8},
        {**portrait, "refine": "base_image_refiner", "refine_steps": 2},
        {
            **portrait,
            "prompt": "A rainbow colored tiger",
            "image": image_url,
            "prompt_strength": 0.8,
            "refine": "base_image_refiner",
            "refine_steps": 2,
        },
        {
            **portrait,
            "prompt": "A rainbow colored bear",
            "image": image_url,
            "mask": mask_url,
            "prompt_strength": 0.95,
            "refine": "base_image_refiner",
            "refine_steps": 2,
        },
    ]


@pytest.mark.slow  # 35 s of 1024² images; the same calls go verbatim to the Replicate API
def test_replicate_guide_requests(server, receiver):
    for name, img in (
        ("/out-0-1.png", smooth_image(768, 768)),
        ("/mask1.png", half_mask(768, 768)),
    ):
        receiver.files[name] = ("image/png", png_bytes(img))
    bodies = _replicate_guide_bodies(receiver.url + "/out-0-1.png", receiver.url + "/mask1.png")
    for inputs in bodies:
        body = server.predict(timeout=300, **inputs).json()
        assert body["status"] == "succeeded", body.get("error")
        (img,) = [decode_output(uri) for uri in body["output"]]
        assert img.size == ((768, 768) if "image" in inputs else (1024, 1024))
    kept = np.asarray(half_mask(768, 768)) < 128
    assert (pixels(img)[kept] == pixels(smooth_image(768, 768))[kept]).all()


def test_the_readmes_predict_command_writes_the_servers_image(tiny_weights, tmp_path, fresh_bytes):
    """`python -m sdxl predict`, the quickstart's main command: a server of its own, one
    prediction, the image written to a file; its pixels equal the Cog server's."""
    import os
    import subprocess
    import sys

    from support.helpers import SERVER_ENV

    env = {**os.environ, **SERVER_ENV, "SDXL_WEIGHTS_DIR": str(tiny_weights)}
    args = []
    for name, value in VALID.items():
        args += ["-i", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    done = subprocess.run(
        [sys.executable, "-m", "sdxl", "predict", *args, "-o", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = done.stdout.split()
    assert written == str(tmp_path / "out" / "output.0.png")
    with open(written, "rb") as f:
        assert_same_image(image_from_bytes(f.read()), image_from_bytes(fresh_bytes[0]), 0)


@pytest.mark.slow  # 15 s for a fault of coglet's, found by the slow fuzz: flagged there
@pytest.mark.xfail(
    strict=True,
    reason="coglet 0.23.1 (the newest) trusts the client's prediction id: one with a NUL byte "
    "fails to make its output folder and never gives its slot back (409 until a restart); "
    "found by the slow fuzz. When this passes, coglet has fixed it: drop the README's warning.",
)
def test_a_prediction_id_with_a_nul_byte_leaves_the_cog_server_serving(tiny_weights, tmp_path):
    server = start_server(tiny_weights, tmp_path)
    try:
        small = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 1}
        body = {"id": "bad\u0000id", "input": small}
        refused = requests.post(server.base + "/predictions", json=body, timeout=60)
        assert refused.json()["status"] == "failed"
        assert server.predict(**small).json()["status"] == "succeeded"
    finally:
        server.stop()
