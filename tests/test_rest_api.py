"""The REST API against a real server: `sdxl.http.server.main` in its own process, real HTTP
on loopback, the tiny model. Sizes and step counts are small so that it runs on a CPU."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
from PIL import Image
from support.api_server import GENERATE, KEYS, REPO, Server, serving
from support.helpers import (
    assert_same_image,
    generator,
    reference_scheduler,
    smooth_image,
    with_scheduler,
)

from sdxl.generate.watermark import apply_watermark

pytestmark = pytest.mark.http

SIZE = 256
LONG = {"prompt": "a long job", "height": SIZE, "width": SIZE, "num_inference_steps": 60}

# The three curl examples of the DataCrunch document, verbatim; `for_cpu` changes only the
# size and the step counts.
EXAMPLE_BASE = {
    "prompt": "A cat with a hat",
    "height": 512,
    "width": 512,
    "num_inference_steps": 50,
    "num_images_per_prompt": 1,
    "seed": 42,
    "refiner": False,
    "is_ensemble": False,
}
EXAMPLE_ENSEMBLE = {**EXAMPLE_BASE, "is_ensemble": True, "refiner_ratio": 0.2}
EXAMPLE_REFINER = {
    "prompt": "A cat with a hat",
    "height": 512,
    "width": 512,
    "num_inference_steps": 40,
    "num_inference_steps_refiner": 10,
    "guidance_scale": 4,
    "guidance_scale_refiner": 4,
    "num_images_per_prompt": 1,
    "seed": 42,
    "refiner": True,
    "is_ensemble": False,
}


def for_cpu(example: dict, steps: int, refiner_steps: int | None = None) -> dict:
    """The example at 256x256 with fewer steps; every other field as written."""
    adapted = {**example, "height": SIZE, "width": SIZE, "num_inference_steps": steps}
    if refiner_steps is not None:
        adapted["num_inference_steps_refiner"] = refiner_steps
    return adapted


def small(seed: int = 1, **extra) -> dict:
    """A quick request (two steps at 256x256)."""
    body = {"prompt": "a photo of a cat", "height": SIZE, "width": SIZE, "seed": seed}
    return {**body, "num_inference_steps": 2, **extra}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": ",".join(KEYS), "SDXL_MAX_BODY_BYTES": "65536"}
    env["SDXL_QUEUE_SIZE_PER_KEY"] = "8"  # one key sends every concurrent request here
    with serving(tiny_weights, tmp_path_factory.mktemp("server"), env) as srv:
        yield srv


def images_of(response: requests.Response) -> list[Image.Image]:
    assert response.status_code == 200, response.text[:2000]
    return [Image.open(io.BytesIO(base64.b64decode(text))) for text in response.json()["images"]]


def job_line(srv: Server, response: requests.Response) -> str:
    job = response.headers["X-Request-Id"]
    (line,) = re.findall(rf"job {job} done .*", srv.log())
    return line


def in_thread(results: dict, name, call, *args) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.__setitem__(name, call(*args)))
    thread.start()
    return thread


def jpeg_base64(width: int, height: int) -> str:
    buffer = io.BytesIO()
    smooth_image(width, height).save(buffer, "JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def truncated_png_base64() -> str:
    """A PNG whose header is fine and whose pixel data stops half way."""
    buffer = io.BytesIO()
    smooth_image(SIZE, SIZE).save(buffer, "PNG")
    data = buffer.getvalue()
    return base64.b64encode(data[: len(data) // 2]).decode()


# ---- the document's examples ----


def test_example_base_model(server):
    response = server.post(for_cpu(EXAMPLE_BASE, steps=4))
    (image,) = images_of(response)
    assert image.format == "PNG" and image.size == (SIZE, SIZE)
    body = response.json()
    assert body["seeds"] == [42]
    assert body["nsfw_content_detected"] == [False]
    assert body["output_format"] == "png"
    assert "base ran 4 steps, refiner ran 0 steps" in job_line(server, response)


def test_example_ensemble_logs_the_step_counts_diffusers_runs(server, tiny_weights):
    from diffusers import DDIMScheduler

    steps, ratio = 10, EXAMPLE_ENSEMBLE["refiner_ratio"]
    response = server.post(for_cpu(EXAMPLE_ENSEMBLE, steps=steps))
    (image,) = images_of(response)
    assert image.size == (SIZE, SIZE)
    # diffusers' denoising_end/denoising_start: the base keeps the timesteps at or above the
    # cutoff, the refiner the ones below (DataCrunch's defaults: DDIM, linspace).
    scheduler = DDIMScheduler.from_pretrained(
        tiny_weights / "base", subfolder="scheduler", timestep_spacing="linspace"
    )
    scheduler.set_timesteps(steps)
    cutoff = round(1000 - (1 - ratio) * 1000)
    base, refiner = (
        int((scheduler.timesteps >= cutoff).sum()),
        int((scheduler.timesteps < cutoff).sum()),
    )
    assert (base, refiner) == (8, 2)
    assert f"base ran {base} steps, refiner ran {refiner} steps" in job_line(server, response)


def test_example_refiner_runs_num_inference_steps_refiner(server):
    response = server.post(for_cpu(EXAMPLE_REFINER, steps=4, refiner_steps=3))
    (image,) = images_of(response)
    assert image.size == (SIZE, SIZE)
    assert response.json()["seeds"] == [42]
    assert "base ran 4 steps, refiner ran 3 steps" in job_line(server, response)


def test_pixels_equal_diffusers_with_datacrunch_defaults(server, reference):
    import torch

    base, _ = reference
    pipe = with_scheduler(base, reference_scheduler(base, "DDIM", timestep_spacing="linspace"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs: sums split across threads round differently
    try:
        expected = pipe(
            prompt="A cat with a hat",
            width=SIZE,
            height=SIZE,
            num_inference_steps=4,
            guidance_scale=4.0,
            generator=generator(42),
        ).images[0]
    finally:
        torch.set_num_threads(threads)
    # Only what DataCrunch users must give: scheduler, guidance and seed are the defaults.
    body = {"prompt": "A cat with a hat", "width": SIZE, "height": SIZE, "num_inference_steps": 4}
    (got,) = images_of(server.post(body))
    # The REST API always applies SDXL's invisible watermark (as DataCrunch's SDXL does).
    (expected,) = apply_watermark([expected])
    assert_same_image(got, expected)


# ---- more of the request ----


@pytest.mark.parametrize(("name", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(server, name, pil):
    response = server.post(small(output_format=name, num_images_per_prompt=2, seed=5))
    images = images_of(response)
    assert [img.format for img in images] == [pil, pil]
    assert response.json()["seeds"] == [5, 6]
    assert response.json()["output_format"] == name


@pytest.mark.parametrize("as_data_uri", [False, True])
def test_seed_image_gives_an_image_of_its_size(server, as_data_uri):
    text = jpeg_base64(320, 256)
    if as_data_uri:
        text = "data:image/jpeg;base64," + text
    response = server.post(small(seed_image=text, strength=0.6, num_inference_steps=4))
    (image,) = images_of(response)
    assert image.size == (320, 256)
    assert f"job {response.headers['X-Request-Id']} started: mode=img2img " in server.log()


def test_aspect_ratio_sets_the_size(server):
    body = {"prompt": "a wide cat", "aspect_ratio": "16:9", "num_inference_steps": 1}
    (image,) = images_of(server.post(body))
    assert image.size == (1344, 768)


def test_style_preset_is_applied(server):
    styled = server.post(small(seed=21, prompt="a fox", style_selected="anime"))
    by_hand = server.post(  # the anime template and negative prompt, written out
        small(
            seed=21,
            prompt="a fox, anime illustration, clean line work, cel shading, vivid colours, "
            "detailed background",
            negative_prompt="photograph, realistic skin, 3d render, muddy colours, deformed",
        )
    )
    (styled_image,), (by_hand_image,) = images_of(styled), images_of(by_hand)
    assert_same_image(styled_image, by_hand_image)  # the pixels: the metadata names the style


def test_no_state_leaks_between_requests(server):
    first = server.post(small(seed=11, num_inference_steps=3)).json()["images"]
    other = small(seed=11, scheduler="KarrasDPM", timestep_spacing="trailing", guidance_scale=9)
    other.update(refiner=True, num_inference_steps_refiner=1)
    assert server.post(other).status_code == 200
    again = server.post(small(seed=11, num_inference_steps=3)).json()["images"]
    assert again == first


# ---- authentication ----


def test_auth(server):
    denied = server.post(small(), key=None)
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in denied.json()["detail"]
    wrong = server.post(small(), key="test-key-alph")
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["detail"]
    basic = server.post(small(), key=None, headers={"Authorization": f"Basic {KEYS[0]}"})
    assert basic.status_code == 401 and "not user:password" in basic.json()["detail"]
    digest = server.post(small(), key=None, headers={"Authorization": f"Digest {KEYS[0]}"})
    assert digest.status_code == 401 and "Bearer or Basic scheme" in digest.json()["detail"]
    for key in KEYS:
        assert server.post(small(), key=key).status_code == 200
    credentials = base64.b64encode(f"anyone:{KEYS[1]}".encode()).decode()
    as_basic = server.post(small(), key=None, headers={"Authorization": f"Basic {credentials}"})
    assert as_basic.status_code == 200  # AUTOMATIC1111's --api-auth: the key as the password
    assert requests.get(server.base + "/health", timeout=10).status_code == 200  # open
    assert all(key not in server.log() for key in KEYS), "an API key was logged"


# ---- errors ----


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (small(num_inference_step=4), "num_inference_step", "did you mean 'num_inference_steps'"),
        (small(strength=1.5), "strength", "strength=1.5 is out of range; use 0.05..1"),
        (small(num_inference_steps=0), "num_inference_steps", "num_inference_steps=0"),
        (small(scheduler="Euler"), "scheduler", "choose one of: DDIM, K_EULER, EulerA"),
        (small(seed="42"), "seed", "must be an integer"),
        (small(seed_image="https://example.com/cat.png"), "seed_image", "URLs are not accepted"),
        (small(seed_image="%%%"), "seed_image", "not valid base64"),
        (small(seed_image=base64.b64encode(b"text").decode()), "seed_image", "not a readable"),
        (small(seed_image=truncated_png_base64()), "seed_image", "is not a readable image"),
        (small(is_ensemble=True, refiner=True), "is_ensemble", "cannot be combined"),
        (small(aspect_ratio="1:1", width=512), "width", "aspect_ratio='1:1' sets width=1024"),
        (small(style_selected="vaporwave-ish"), "style_selected", "is not supported; choose one"),
        (small(lora_name="no-such-lora"), "lora_name", "no-such-lora"),
        (small(width=260), "width", "width=260 is not a multiple of 8; use 256 or 264"),
        (
            small(is_ensemble=True, num_inference_steps=1),
            "num_inference_steps",
            "refiner_ratio=0.2",
        ),
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "must be a JSON object"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(server, body, field, words):
    response = server.post(body)
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["field"] == field
    assert words in item["msg"]
    assert "sdxl-seed-image" not in item["msg"], "the server's temporary file leaked"


def test_body_over_the_limit_is_413_with_or_without_content_length(server):
    big = small(negative_prompt="x" * 70_000)
    declared = server.post(big)
    assert declared.status_code == 413
    assert "65536 bytes (SDXL_MAX_BODY_BYTES)" in declared.json()["detail"]

    payload = json.dumps(big).encode()
    chunks = (payload[i : i + 8192] for i in range(0, len(payload), 8192))
    streamed = server.post(chunks)  # chunked: no Content-Length to trust
    assert streamed.status_code == 413
    assert server.post(small()).status_code == 200


# ---- the queue ----


def test_concurrent_requests_each_get_their_own_images(server):
    """Six clients at once, with distinct seeds and one or two images each."""
    counts = {1000 + 10 * i: 1 + i % 2 for i in range(6)}
    barrier = threading.Barrier(len(counts))
    results: dict = {}

    def send(seed):
        barrier.wait()
        return server.post(small(seed=seed, num_images_per_prompt=counts[seed]))

    threads = [in_thread(results, seed, send, seed) for seed in counts]
    for thread in threads:
        thread.join()
    log = server.log()
    for seed, count in counts.items():
        response = results[seed]
        assert len(images_of(response)) == count
        assert response.json()["seeds"] == [seed + i for i in range(count)]
        job = response.headers["X-Request-Id"]
        assert len(re.findall(rf"job {job} done .*seeds \[{seed}[],]", log)) == 1
    assert len({results[seed].headers["X-Request-Id"] for seed in counts}) == len(counts)


def test_requests_run_in_arrival_order_and_health_stays_responsive(server):
    """One long job, then requests sent one by one: they start in the order they came."""
    results: dict = {}
    threads = [in_thread(results, 0, server.post, {**LONG, "seed": 500})]
    server.wait_for(lambda h: h["running"] == 1, "busy")
    # A client that hangs up while queued: its request leaves the queue.
    payload = json.dumps(small(seed=499)).encode()
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS[0]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as quitter:
        quitter.sendall(head.encode() + payload)
        server.wait_for(lambda h: h["queued"] == 1, "1 queued")
    server.wait_for(lambda h: h["queued"] == 0 and h["running"] == 1, "rid of the quitter")
    for i in range(1, 5):
        threads.append(in_thread(results, i, server.post, small(seed=500 + i)))
        server.wait_for(lambda h, i=i: h["queued"] == i, f"{i} queued")
    during = server.health()  # /health answers while the long job still runs
    assert during["running"] == 1 and "seeds [500]" not in server.log()
    for thread in threads:
        thread.join()
    ids = [results[i].headers["X-Request-Id"] for i in range(5)]
    started = re.findall(r"job (\d+) started", server.log())
    assert [started.index(job) for job in ids] == sorted(started.index(job) for job in ids)
    assert [results[i].json()["seeds"] for i in range(5)] == [[500 + i] for i in range(5)]
    assert "seeds [499]" not in server.log()
    assert "disconnected before its images were ready" in server.log()


def test_a_client_that_hangs_up_cancels_its_running_job(server):
    payload = json.dumps({**LONG, "seed": 77}).encode()
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS[0]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as quitter:
        quitter.sendall(head.encode() + payload)
        server.wait_for(lambda h: h["running"] == 1, "busy")
    server.wait_for(lambda h: h["running"] == 0 and h["queued"] == 0, "free again", timeout=30)
    (line,) = re.findall(r"job \d+ canceled after .*", server.log())
    assert "disconnected" in line
    assert "seeds [77]" not in server.log()  # it never finished
    assert server.post(small(seed=78)).status_code == 200


# Injected into a server process: restoring the shared models after a LoRA fails.
BREAK_RESTORE = """
import sdxl.adapters.resident
def _cannot(self):
    raise RuntimeError("restore injected to fail")
sdxl.adapters.resident.ResidentWeights._disable = _cannot
"""


def test_a_server_whose_models_cannot_be_restored_is_not_ready(tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path, {"SDXL_API_KEYS": KEYS[0]}, preamble=BREAK_RESTORE)
    try:
        srv.wait_ready()
        broken = srv.post(small(lora_name="offset"))
        assert broken.status_code == 503
        assert "restore injected to fail" in broken.json()["detail"]
        ready = requests.get(srv.base + "/ready", timeout=10)
        assert ready.status_code == 503 and "restore injected" in ready.json()["error"]
        assert requests.get(srv.base + "/health", timeout=10).status_code == 503
        later = srv.post(small())
        assert later.status_code == 503 and "restarted" in later.json()["detail"]
    finally:
        srv.stop()


def test_importing_the_api_server_does_not_import_torch():
    code = "import sys, sdxl.http.server; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_lifecycle_loading_busy_full_draining(tiny_weights, tmp_path):
    """One server through its life: 503 while loading, keys from a file, 429 when the queue
    (of 1) is full, and on SIGTERM 503 for new requests and the waiting one while the running
    one finishes."""
    keyfile, key = tmp_path / "keys.txt", "file-key-1"
    keyfile.write_text(f"# one key a line\n{key}\n")
    env = {"SDXL_API_KEYS_FILE": str(keyfile), "SDXL_QUEUE_SIZE": "1"}
    srv = Server(tiny_weights, tmp_path, env, gate=tmp_path / "gate")
    try:
        srv.wait_for(lambda h: h["status"] == "loading", "up")  # answers before the model loads
        loading = srv.post(small(), key=key)
        assert loading.status_code == 503
        assert int(loading.headers["Retry-After"]) >= 1
        assert "still loading" in loading.json()["detail"]
        assert requests.get(srv.base + "/ready", timeout=10).status_code == 503

        srv.gate.touch()
        srv.wait_ready()
        assert requests.get(srv.base + "/ready", timeout=10).status_code == 200
        assert srv.post(small(), key=KEYS[0]).status_code == 401  # only the file's key

        results: dict = {}
        threads = [in_thread(results, "long", srv.post, {**LONG, "seed": 3}, key)]
        srv.wait_for(lambda h: h["running"] == 1, "busy")
        threads.append(in_thread(results, "queued", srv.post, small(seed=4), key))
        srv.wait_for(lambda h: h["queued"] == 1, "queued")
        full = srv.post(small(), key=key)
        assert full.status_code == 429
        assert int(full.headers["Retry-After"]) >= 1
        assert "SDXL_QUEUE_SIZE" in full.json()["detail"]

        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(lambda h: h["status"] == "draining", "draining", timeout=30)
        late = srv.post(small(), key=key)
        assert late.status_code == 503
        assert "shutting down" in late.json()["detail"]
        for thread in threads:
            thread.join()
        assert images_of(results["long"]) and results["long"].json()["seeds"] == [3]
        stopped = results["queued"]  # it never ran: the client is told to send it again
        assert stopped.status_code == 503 and int(stopped.headers["Retry-After"]) >= 1
        assert "the server is stopping; retry" in stopped.json()["detail"]
        assert srv.proc.wait(timeout=60) == 0, srv.log()
        assert "stopping: 1 running will finish, 1 waiting handed back" in srv.log()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "no API keys configured"),
        ({"SDXL_API_KEYS": "k", "SDXL_QUEUE_SIZE": "many"}, "SDXL_QUEUE_SIZE='many'"),
        ({"SDXL_API_KEYS": "k", "SDXL_MAX_BODY_BYTES": "-1"}, "SDXL_MAX_BODY_BYTES='-1'"),
    ],
)
def test_refuses_to_start_on_bad_settings(tmp_path, env, words):
    srv = Server(tmp_path, tmp_path, env)
    try:
        assert srv.proc.wait(timeout=60) == 2
        assert words in srv.log()
    finally:
        srv.stop()


def test_no_auth_needs_no_key_and_missing_weights_exit_1(tmp_path):
    srv = Server(tmp_path / "nowhere", tmp_path, {}, args=["--no-auth"], gate=tmp_path / "gate")
    try:
        srv.wait_for(lambda h: h["status"] == "loading", "up")
        assert srv.post(small(), key=None).status_code == 503  # not 401: no key needed
        srv.gate.touch()
        assert srv.proc.wait(timeout=120) == 1
        assert "python -m sdxl weights tiny" in srv.log()
    finally:
        srv.stop()


def test_openapi_is_published(server):
    schema = requests.get(server.base + "/openapi.json", timeout=10).json()
    operation = schema["paths"][GENERATE]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert {"200", "401", "413", "422", "429", "503"} <= set(operation["responses"])
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert fields["scheduler"]["default"] == "DDIM"
    assert fields["strength"]["minimum"] == 0.05


def test_offset_lora_by_name_changes_the_image(server):
    (plain,) = images_of(server.post(small(seed=5)))
    (offset,) = images_of(server.post(small(seed=5, lora_name="offset")))
    (again,) = images_of(server.post(small(seed=5)))
    assert np.abs(np.asarray(offset, dtype=int) - np.asarray(plain, dtype=int)).max() > 0
    assert np.array_equal(np.asarray(again), np.asarray(plain)), "the LoRA stayed loaded"


@pytest.mark.slow  # a server of its own; test_safety and test_predictor blacken flagged images
def test_safety_filter_blackens_flagged_images_end_to_end(tmp_path):
    from sdxl.builders.tiny import build_tiny_weights

    weights = build_tiny_weights(tmp_path / "weights", flag_everything=True)
    srv = Server(weights, tmp_path, {"SDXL_API_KEYS": KEYS[0]})
    try:
        srv.wait_ready()
        filtered = srv.post(small(num_images_per_prompt=2))
        unfiltered = srv.post(small(num_images_per_prompt=2, safety_filter=False))
    finally:
        srv.stop()
    assert filtered.json()["nsfw_content_detected"] == [True, True]
    assert all(not np.asarray(img).any() for img in images_of(filtered))
    assert unfiltered.json()["nsfw_content_detected"] == [False, False]
    assert all(np.asarray(img).any() for img in images_of(unfiltered))
