"""Replicate's HTTP API on `python -m sdxl api`, called by the official clients: `replicate`
1.0.7 from PyPI in this process, `replicate` 1.4.0 from npm through Node.js (tests/js). Real
server processes on loopback, the tiny model, small sizes and step counts (said where used)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import replicate
import requests
import torch
from PIL import Image
from support.api_server import KEYS, REPO, Server, serving
from support.cog_server import Receiver, png_bytes, signed_deliveries
from support.files import Files
from support.helpers import cog_upload, half_mask, pixels, smooth_image, wait_until

from sdxl.config import COG_INPUTS, COG_SCHEMA_FILE

pytestmark = pytest.mark.http

GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
MODEL = f"stability-ai/sdxl:{GUIDE_VERSION}"
JS = REPO / "tests" / "js"
SMALL = {"width": 256, "height": 256, "num_inference_steps": 3}
LONG = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 300}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicate-api")
    with serving(tiny_weights, folder, {"SDXL_API_KEYS": KEYS[0], "SDXL_PAGE_SIZE": "2"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return replicate.Client(api_token=KEYS[0], base_url=server.base)


@pytest.fixture(scope="module")
def predictor(tiny_weights):
    """The Cog predictor in this process: the reference for the API's pixels."""
    from predict import Predictor

    previous = os.environ.get("SDXL_WEIGHTS_DIR")
    os.environ["SDXL_WEIGHTS_DIR"] = str(tiny_weights)
    try:
        p = Predictor()
        p.setup()
    finally:
        os.environ["SDXL_WEIGHTS_DIR"] = previous or ""
    yield p
    p.engine.close()


def cog_pixels(predictor, inputs: dict, seed: int) -> np.ndarray:
    """The Cog predictor's image for `inputs` (file inputs as PNG bytes) and `seed`, with one
    intra-op thread as the server runs (sums split across threads round differently)."""
    args = {name: spec.default for name, spec in COG_INPUTS.items()}
    for name, value in inputs.items():
        args[name] = cog_upload(value, f"{name}.png") if isinstance(value, bytes) else value
    args["seed"] = seed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (path,) = predictor.run(**args)
    finally:
        torch.set_num_threads(threads)
    with Image.open(path) as img:
        return pixels(img)


def node(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    assert (JS / "node_modules" / "replicate").is_dir(), (
        "the JavaScript client is not installed: run `npm ci --prefix tests/js` (the README's "
        "test command does)"
    )
    return subprocess.run(
        ["node", str(JS / script), *args],
        cwd=JS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ---- the guide's JavaScript, verbatim but for the base URL, files and sizes ------------------


def test_the_guides_five_javascript_calls(server, predictor, tmp_path):
    image, mask = png_bytes(smooth_image(256, 256)), png_bytes(half_mask(256, 256))
    (tmp_path / "image.png").write_bytes(image)
    (tmp_path / "mask.png").write_bytes(mask)
    env = {"REPLICATE_API_TOKEN": KEYS[0], "REPLICATE_BASE_URL": server.base + "/v1"}
    done = node("replicate_guide.cjs", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr + server.log()[-3000:]
    for name in ("astronaut", "ensemble", "refiner", "img2img", "inpaint"):
        prediction = json.loads((tmp_path / f"{name}.json").read_text())
        assert prediction["status"] == "succeeded", prediction
        got = decoded((tmp_path / f"{name}.out").read_bytes())
        assert got.size == (256, 256) and got.format == "PNG"
        inputs = dict(prediction["input"])  # as stored: numeric strings already numbers
        assert name != "ensemble" or inputs["high_noise_frac"] == 0.8
        assert name != "refiner" or inputs["refine_steps"] == 2
        for key in ("image", "mask"):
            if key in inputs:
                assert inputs[key].startswith(server.base + "/v1/files/")  # uploaded first
                inputs[key] = {"image": image, "mask": mask}[key]
        (seed,) = prediction["metrics"]["seeds"]
        expected = cog_pixels(predictor, inputs, seed)
        assert np.array_equal(pixels(got), expected), name
    kept = np.asarray(half_mask(256, 256)) < 128
    assert (pixels(got)[kept] == pixels(smooth_image(256, 256))[kept]).all()


@pytest.fixture
def held_image(server):
    """An image URL whose download stalls until `release`: its prediction stays `starting`,
    in preparation, as long as the test wants it to."""
    files = Files()
    files.files["/photo.png"] = png_bytes(smooth_image(256, 256))
    files.held.add("/photo.png")
    yield files
    files.close()


def polled(server, prediction_id: str) -> int:
    """How many times a client asked for the prediction (the access log's GETs)."""
    return server.log().count(f"GET /v1/predictions/{prediction_id} ")


def outlasting_input(held) -> dict:
    return {"prompt": "a cat", **SMALL, "image": held.url + "/photo.png", "prompt_strength": 0.6}


def test_javascript_run_returns_images_when_generation_outlasts_the_wait(
    server, tmp_path, held_image
):
    script = tmp_path / "outlast.cjs"
    script.write_text(
        """
const Replicate = require("replicate");
const replicate = new Replicate({auth: process.env.REPLICATE_API_TOKEN,
                                 baseUrl: process.env.REPLICATE_BASE_URL});
replicate.run(process.argv[2], {input: JSON.parse(process.argv[3]),
                                wait: {mode: "block", timeout: 1}})
  .then(async (output) => { console.log(String(output[0]).slice(0, 30)); })
  .catch((err) => { console.error(err.message); process.exit(1); });
"""
    )
    env = {**os.environ, "REPLICATE_API_TOKEN": KEYS[0]}
    env.update(REPLICATE_BASE_URL=server.base + "/v1", NODE_PATH=str(JS / "node_modules"))
    inputs = json.dumps(outlasting_input(held_image))
    run = subprocess.Popen(
        ["node", str(script), MODEL, inputs], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert held_image.started.wait(60)  # the job is in preparation: it cannot end yet
        latest = wait_until(lambda: newest_prediction(server), "created")
        wait_until(lambda: polled(server, latest) >= 1, "polled after the wait ran out")
        held_image.release.set()
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0 and output.startswith("data:image/png;base64,")


def newest_prediction(server) -> str | None:
    results = server.api("GET", "/v1/predictions").json()["results"]
    return results[0]["id"] if results and results[0]["status"] == "starting" else None


# ---- the Python client ----------------------------------------------------------------------


def test_python_run_with_a_local_file_uploads_it(client, server, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(smooth_image(320, 256)))
    with path.open("rb") as f:
        (output,) = client.run(
            MODEL, input={"prompt": "a cat", "image": f, "prompt_strength": 0.6, **SMALL}
        )
    assert decoded(output.read()).size == (320, 256)
    (latest,) = client.predictions.list().results[:1]
    assert latest.input["image"].startswith(server.base + "/v1/files/")


def test_python_run_by_model_name_and_numeric_strings(client):
    (output,) = client.run(
        "stability-ai/sdxl",
        input={"prompt": "a cat", "refine": "expert_ensemble_refiner", "high_noise_frac": "0.8"}
        | SMALL,
    )
    assert decoded(output.read()).size == (256, 256)


def test_python_run_returns_images_when_generation_outlasts_the_wait(client, server, held_image):
    outputs = []
    run = threading.Thread(
        target=lambda: outputs.extend(client.run(MODEL, input=outlasting_input(held_image), wait=1))
    )
    run.start()
    assert held_image.started.wait(60)  # the job is in preparation: it cannot end yet
    latest = wait_until(lambda: newest_prediction(server), "created")
    wait_until(lambda: polled(server, latest) >= 1, "polled after the wait ran out")
    held_image.release.set()
    run.join(120)
    (output,) = outputs
    assert decoded(output.read()).size == (256, 256)


def test_create_wait_and_read_back(client):
    prediction = client.predictions.create(version=GUIDE_VERSION, input={"prompt": "a", **SMALL})
    assert prediction.status == "starting" and prediction.version == GUIDE_VERSION
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert prediction.output[0].startswith("data:image/png;base64,")
    assert "base step 3/3" in prediction.logs
    assert prediction.metrics["predict_time"] > 0 and len(prediction.metrics["seeds"]) == 1
    again = client.predictions.get(prediction.id)
    assert again.output == prediction.output and again.completed_at is not None


def test_cancel_mid_run_stops_it(client, server):
    prediction = client.predictions.create(version=GUIDE_VERSION, input=LONG)
    deadline = time.monotonic() + 60
    while prediction.status != "processing" and time.monotonic() < deadline:
        time.sleep(0.05)
        prediction.reload()
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled" and prediction.output is None
    assert "base step 300/300" not in (prediction.logs or "")
    (output,) = client.run(MODEL, input={"prompt": "next", **SMALL})  # the GPU is free
    assert output.read()


def test_a_prediction_makes_previews_only_once_someone_reads_them(client, server):
    prediction = client.predictions.create(version=GUIDE_VERSION, input=LONG)
    preview_url = f"{server.base}/v1/predictions/{prediction.id}/preview"
    headers = {"Authorization": f"Bearer {KEYS[0]}"}

    def steps_run() -> int:
        prediction.reload()
        done = [
            int(line.split()[2].split("/")[0])
            for line in (prediction.logs or "").splitlines()
            if line.startswith("base step ")
        ]
        return max(done, default=0)

    wait_until(lambda: steps_run() >= 12, "12 steps run", timeout=120)
    asked_at = steps_run()
    first = requests.get(preview_url, headers=headers, timeout=10)
    assert first.status_code == 204  # nobody read them: none was made at step 5 or 10
    shown = wait_until(
        lambda: (
            (r := requests.get(preview_url, headers=headers, timeout=10)).status_code == 200 and r
        ),
        "a preview once asked for",
        timeout=120,
    )
    assert int(shown.headers["X-Preview-Step"]) > asked_at
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled"


def test_a_failing_input_raises_model_error_with_our_message(client):
    with pytest.raises(replicate.exceptions.ModelError) as caught:
        client.run(MODEL, input={"prompt": "a", **SMALL, "width": 260})
    assert "width=260 is not a multiple of 8; use 256 or 264" in str(caught.value)


def test_schema_errors_are_422_naming_the_input_never_an_unknown_ones_value(client):
    with pytest.raises(replicate.exceptions.ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "a", "high_noise_frac": "abc", "auth": "r8_secret"})
    err = caught.value
    assert err.status == 422 and err.title == "Input validation failed"
    assert "input.high_noise_frac: high_noise_frac='abc' must be a number" in err.detail
    assert "input.auth: 'auth' is not an input" in err.detail and "r8_secret" not in err.detail


def test_a_wrong_key_is_401(server):
    wrong = replicate.Client(api_token="not-the-key", base_url=server.base)
    with pytest.raises(replicate.exceptions.ReplicateError) as caught:
        wrong.predictions.list()
    assert caught.value.status == 401
    assert "not-the-key" not in server.log()


def test_an_unknown_version_is_422_and_an_unknown_model_404(client):
    with pytest.raises(replicate.exceptions.ReplicateError) as caught:
        client.predictions.create(version="0" * 64, input={"prompt": "a"})
    assert caught.value.status == 422
    assert caught.value.title == "Invalid version or not permitted"
    with pytest.raises(replicate.exceptions.ReplicateError) as caught:
        client.models.get("someone/else")
    assert caught.value.status == 404


def test_models_and_versions_carry_the_predictors_schema(client):
    model = client.models.get("stability-ai/sdxl")
    schema = json.loads(COG_SCHEMA_FILE.read_text())
    assert model.latest_version.openapi_schema == schema
    guide = client.models.get("stability-ai/sdxl").versions.get(GUIDE_VERSION)
    assert guide.openapi_schema == schema and guide.cog_version


def test_pagination_newest_first(client):
    for i in range(3):
        client.predictions.create(version=GUIDE_VERSION, input={"prompt": str(i), **SMALL})
    pages = list(replicate.paginate(client.predictions.list))
    assert len(pages[0].results) == 2 and pages[0].next  # SDXL_PAGE_SIZE=2
    ids = [p.id for page in pages for p in page.results]
    assert len(ids) == len(set(ids)) >= 3
    created = [p.created_at for page in pages for p in page.results]
    assert created == sorted(created, reverse=True)


def test_a_signed_webhook_is_received_and_verified(client):
    receiver = Receiver()
    try:
        prediction = client.predictions.create(
            version=GUIDE_VERSION,
            input={"prompt": "a", **SMALL},
            webhook=receiver.url + "/hook",
            webhook_events_filter=["start", "completed"],
        )
        receiver.wait_for(lambda reqs: any(b'"succeeded"' in body for *_, body in reqs))
        sent = signed_deliveries(receiver, "/hook", client.webhooks.default.secret())
        assert sent[-1]["status"] == "succeeded" and sent[-1]["id"] == prediction.id
        assert "logs" not in {body.get("event") for body in sent}
    finally:
        receiver.close()


def test_a_client_that_stops_waiting_does_not_cancel(server, client):
    response = requests.post(
        server.base + "/v1/predictions",
        json={"version": GUIDE_VERSION, "input": {**LONG, "num_inference_steps": 40}},
        headers={"Authorization": f"Bearer {KEYS[0]}", "Prefer": "wait=1"},
        timeout=30,
    )
    assert response.status_code == 201 and response.json()["status"] == "starting"
    prediction = client.predictions.get(response.json()["id"])
    prediction.wait()
    assert prediction.status == "succeeded"


# ---- state across restarts, outputs as URLs ---------------------------------------------------


@pytest.mark.slow  # test_scale_out kills a replica mid-job on the default run
def test_a_killed_server_leaves_its_running_prediction_failed(tiny_weights, tmp_path):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_STATE_DIR": str(tmp_path / "state")}
    first = Server(tiny_weights, tmp_path, env)
    try:
        first.wait_ready()
        client = replicate.Client(api_token=KEYS[0], base_url=first.base)
        done = client.predictions.create(version=GUIDE_VERSION, input={"prompt": "a", **SMALL})
        done.wait()
        running = client.predictions.create(version=GUIDE_VERSION, input=LONG)
        queued = client.predictions.create(version=GUIDE_VERSION, input={"prompt": "b", **SMALL})
        wait_until(lambda: client.predictions.get(running.id).status == "processing", "running")
        first.proc.kill()  # SIGKILL: no drain, no cleanup
        first.proc.wait(30)
    finally:
        first.stop()
    second = Server(tiny_weights, tmp_path, env)
    try:
        second.wait_ready()
        client = replicate.Client(api_token=KEYS[0], base_url=second.base)
        lost = client.predictions.get(running.id)
        assert lost.status == "failed" and "server stopped while this prediction" in lost.error
        kept = client.predictions.get(done.id)
        assert kept.status == "succeeded" and kept.output == done.output
        later = client.predictions.get(queued.id)
        later.wait()
        assert later.status == "succeeded"  # queued before the crash, run after the restart
    finally:
        second.stop()


def test_outputs_as_urls_under_sdxl_public_url(tiny_weights, tmp_path):
    from sdxl.net.ports import free_port

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_PUBLIC_URL": public}
    srv = Server(tiny_weights, tmp_path, env, port=port)
    try:
        srv.wait_ready()
        client = replicate.Client(api_token=KEYS[0], base_url=srv.base)
        prediction = client.predictions.create(
            version=GUIDE_VERSION, input={"prompt": "a", **SMALL}
        )
        prediction.wait()
        (url,) = prediction.output
        assert url.startswith(public + "/outputs/") and prediction.urls["get"].startswith(public)
        fetched = requests.get(url, timeout=10)  # no key: the URL itself is the secret
        assert fetched.status_code == 200 and decoded(fetched.content).size == (256, 256)
        guessed = url.rsplit("/", 2)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/out-0.png"
        assert requests.get(guessed, timeout=10).status_code == 404
    finally:
        srv.stop()


def test_files_take_the_javascript_metadata_part(server):
    response = requests.post(
        server.base + "/v1/files",
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        files={
            "content": ("buffer_1", b"\x89PNG...", "application/octet-stream"),
            "metadata": ("blob", b'{"purpose": "test"}', "application/json"),
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["metadata"] == {"purpose": "test"} and body["size"] == 7
    assert body["urls"]["get"] == f"{server.base}/v1/files/{body['id']}"
    assert body["checksums"]["sha256"] == body["etag"]


def test_a_data_uri_input(client):
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(smooth_image(256, 256))).decode()
    (output,) = client.run(MODEL, input={"prompt": "a", "image": uri, **SMALL})
    assert decoded(output.read()).size == (256, 256)


def test_the_store_lives_in_sdxl_state_dir(server, tmp_path_factory):
    (state,) = Path(server.log_path).parent.glob(f"state-{server.port}")
    assert (state / "predictions.db").is_file()


def test_the_javascript_data_uri_bug_never_stores_or_logs_the_token(server, tmp_path):
    """replicate 1.4.0's fileEncodingStrategy "data-uri" sends the whole client object, API
    token included, as the input: it is refused without echoing a value, and the token is in
    no log line and no stored prediction."""
    script = tmp_path / "data_uri.cjs"
    script.write_text(
        """
const Replicate = require("replicate");
const replicate = new Replicate({auth: process.env.REPLICATE_API_TOKEN,
                                 baseUrl: process.env.REPLICATE_BASE_URL,
                                 fileEncodingStrategy: "data-uri"});
replicate.run(process.argv[2], {input: {prompt: "a cat", width: 256, height: 256}})
  .then(() => { console.log("no error"); })
  .catch((err) => { console.log(err.message); });
"""
    )
    env = {"REPLICATE_API_TOKEN": KEYS[0], "REPLICATE_BASE_URL": server.base + "/v1"}
    env["NODE_PATH"] = str(JS / "node_modules")
    done = node(str(script), MODEL, env=env)
    assert "422" in done.stdout and "Input validation failed" in done.stdout, done.stdout
    assert KEYS[0] not in done.stdout  # the error names inputs, never their values
    assert KEYS[0] not in server.log()
    state = Path(server.log_path).parent / f"state-{server.port}"
    for stored in state.glob("predictions.db*"):  # the database and its write-ahead log
        assert KEYS[0].encode() not in stored.read_bytes()
