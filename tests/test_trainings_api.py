"""Replicate's trainings API on `python -m sdxl api`, with the official clients: a destination
model, a training from a zip, the new version run on every API, tenants kept apart, webhooks
signed, a prediction served between training steps, a cancelled training's checkpoint served
to its owner and resumed from. Real servers on loopback with the tiny model; orders of events,
never durations."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile

import numpy as np
import pytest
import replicate
import requests
from PIL import Image
from support.api_server import GUIDE_VERSION, serving
from support.archives import photos, write_zip
from support.cog_server import Receiver, signed_deliveries
from support.files import Files
from test_replicate_api import node

from sdxl.train import checkpoint

pytestmark = pytest.mark.http

ALICE, BOB, ROOT = "alice-key", "bob-key", "root-key"
TRAIN = {  # a few quick steps on the tiny model, strong enough to change its images
    "resolution": 256,
    "train_batch_size": 2,
    "lora_rank": 4,
    "lora_lr": 5e-3,
    "ti_lr": 5e-3,
    "lr_warmup_steps": 2,
    "seed": 5,
}
IMAGE = {"prompt": "a photo of TOK", "width": 256, "height": 256, "num_inference_steps": 3}
ENDED = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("trainings")


@pytest.fixture(scope="module")
def server(tiny_weights, folder):
    env = {
        "SDXL_API_KEYS": f"alice:{ALICE},bob:{BOB}",
        "SDXL_ADMIN_KEY": ROOT,
        "SDXL_LOCAL_WEIGHTS_DIRS": str(folder / "local"),
        "SDXL_MAX_TRAININGS_PER_KEY": "3",
    }
    with serving(tiny_weights, folder, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def alice(server):
    return replicate.Client(api_token=ALICE, base_url=server.base)


@pytest.fixture(scope="module")
def zipped(folder):
    return write_zip(folder / "photos.zip", photos(3))


def call(server, method: str, path: str, key: str = ALICE, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.request(method, server.base + path, headers=headers, timeout=60, **kwargs)


def start_training(client, zipped, steps: int, inputs: dict | None = None, **options):
    """A training of alice/my-sdxl on the photos (a local file: the client uploads it)."""
    with open(zipped, "rb") as archive:
        return client.trainings.create(
            model="stability-ai/sdxl",
            version=GUIDE_VERSION,
            input={"input_images": archive, "max_train_steps": steps, **TRAIN, **(inputs or {})},
            destination="alice/my-sdxl",
            **options,
        )


def until_ended(training):
    while training.status not in ENDED:
        training.reload()
    return training


def image_bytes(output) -> bytes:
    (first,) = output
    return first.read()


@pytest.fixture(scope="module")
def destination(alice) -> str:
    alice.models.create(owner="alice", name="my-sdxl", visibility="private", hardware="gpu")
    return "alice/my-sdxl"


@pytest.fixture(scope="module")
def trained(alice, zipped, destination):
    """One succeeded training of alice/my-sdxl, created with a local file (the Python client
    uploads it through /v1/files)."""
    training = start_training(alice, zipped, 6)
    assert training.status == "starting" and training.input["input_images"].startswith("http")
    return until_ended(training)


@pytest.fixture(scope="module")
def local_tar(server, trained, folder):
    """The trained tar, downloaded from its `weights` URL with the key into a folder the server
    reads local weights from (SDXL_LOCAL_WEIGHTS_DIRS)."""
    weights = call(server, "GET", f"/v1/trainings/{trained.id}/weights")
    assert weights.status_code == 200, weights.text
    assert trained.output["weights"] == f"{server.base}/v1/trainings/{trained.id}/weights"
    local = folder / "local" / "trained_model.tar"
    local.parent.mkdir(exist_ok=True)
    local.write_bytes(weights.content)
    return local


def test_the_python_client_trains_and_runs_the_new_version(server, alice, trained, local_tar):
    assert trained.status == "succeeded", trained.error
    assert trained.output["version"] == f"alice/my-sdxl:{trained.id}"
    steps = [line for line in trained.logs.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{n}/6" for n in range(1, 7)]
    assert alice.trainings.get(trained.id).output == trained.output
    assert trained.id in [t.id for t in alice.trainings.list().results]
    assert alice.accounts.current().username == "alice"  # the owner of its models
    model = alice.models.get("alice/my-sdxl")
    assert model.latest_version.id == trained.id
    # The new version runs with the trained weights: its pixels are those of the served
    # model given the same tar as replicate_weights, and not those of the served model alone.
    with tarfile.open(local_tar) as tar:
        assert {"lora.safetensors", "embeddings.pti", "special_params.json"} <= set(tar.getnames())
    seeded = {**IMAGE, "seed": 21}
    mine = image_bytes(alice.run(trained.output["version"], input=seeded))
    given = {**seeded, "replicate_weights": str(local_tar)}
    assert mine == image_bytes(alice.run(f"stability-ai/sdxl:{GUIDE_VERSION}", input=given))
    plain = image_bytes(alice.run(f"stability-ai/sdxl:{GUIDE_VERSION}", input=seeded))
    assert mine != plain
    latest = call(server, "POST", "/v1/models/alice/my-sdxl/predictions", json={"input": seeded})
    assert latest.status_code == 201 and latest.json()["version"] == trained.id


@pytest.fixture(scope="module")
def cancelled(server, alice, zipped, destination):
    """A long training cancelled after its first checkpoint (at step 2), and the metrics read
    while it ran."""
    training = start_training(alice, zipped, 5000, {"checkpointing_steps": 2})
    while "checkpoint at step 2:" not in (training.logs or ""):
        training.reload()
    running = requests.get(server.base + "/metrics", timeout=10).text
    assert alice.trainings.cancel(training.id).status == "canceled"
    return training, running


def test_the_python_client_cancels_a_running_training_and_the_metrics_count_it(
    server, alice, cancelled
):
    training, running = cancelled
    assert 'sdxl_trainings{state="running"} 1.0' in running
    (rate,) = map(float, re.findall(r"^sdxl_training_steps_per_second (\S+)$", running, re.M))
    assert rate > 0
    ended = alice.trainings.get(training.id)
    assert ended.status == "canceled" and ended.error is None
    assert ended.output == {"checkpoint": f"{server.base}/v1/trainings/{training.id}/checkpoint"}
    assert training.id not in [v["id"] for v in versions_of(server, "alice", "my-sdxl")]
    metrics = requests.get(server.base + "/metrics", timeout=10).text
    assert 'sdxl_trainings{state="canceled"} 1.0' in metrics
    (steps,) = map(float, re.findall(r"^sdxl_training_steps_total (\S+)$", metrics, re.M))
    assert steps >= 1  # the cancelled training's steps, counted when its run ended


def versions_of(server, owner: str, name: str) -> list[dict]:
    answer = call(server, "GET", f"/v1/models/{owner}/{name}/versions")
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def test_the_new_version_on_openais_and_automatic1111s_apis(server, trained, local_tar):
    """OpenAI's `model` and AUTOMATIC1111's checkpoint name the trained model: its pixels are
    the served model's with the same tar as replicate_weights (an input OpenAI's API takes),
    and a checkpoint chosen with POST /options is the caller's until it chooses another."""
    body = {"prompt": IMAGE["prompt"], "size": "256x256", "num_inference_steps": 3, "seed": 22}

    def openai(**extra) -> np.ndarray:
        answer = call(server, "POST", "/v1/images/generations", json={**body, **extra})
        assert answer.status_code == 200, answer.text
        return pixels(b64(answer.json()["data"][0]["b64_json"]))

    trained_openai = openai(model="alice/my-sdxl")
    assert np.array_equal(trained_openai, openai(model="sdxl", replicate_weights=str(local_tar)))
    assert not np.array_equal(trained_openai, openai(model="sdxl"))
    listed = call(server, "GET", "/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["sdxl", "alice/my-sdxl"]

    txt2img = {"prompt": IMAGE["prompt"], "width": 256, "height": 256, "steps": 3, "seed": 22}

    def a1111(**extra) -> np.ndarray:
        answer = call(server, "POST", "/sdapi/v1/txt2img", json={**txt2img, **extra})
        assert answer.status_code == 200, answer.text
        return pixels(b64(answer.json()["images"][0]))

    served = a1111()
    overridden = a1111(override_settings={"sd_model_checkpoint": "alice/my-sdxl"})
    assert not np.array_equal(overridden, served)
    chosen = call(
        server, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "alice/my-sdxl"}
    )
    assert chosen.status_code == 200, chosen.text
    assert call(server, "GET", "/sdapi/v1/options").json()["sd_model_checkpoint"] == "alice/my-sdxl"
    assert np.array_equal(a1111(), overridden)
    assert call(server, "GET", "/sdapi/v1/options", BOB).json()["sd_model_checkpoint"] == "sdxl"
    call(server, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl"})
    assert np.array_equal(a1111(), served)
    titles = [m["title"] for m in call(server, "GET", "/sdapi/v1/sd-models").json()]
    assert titles == ["sdxl", "alice/my-sdxl"]


def test_another_tenant_sees_none_of_it(server, trained, zipped):
    bob = replicate.Client(api_token=BOB, base_url=server.base)
    missing = call(server, "GET", "/v1/trainings/nosuchtraining000000000000", BOB)
    for method, path in (
        ("GET", f"/v1/trainings/{trained.id}"),
        ("POST", f"/v1/trainings/{trained.id}/cancel"),
        ("GET", f"/v1/trainings/{trained.id}/weights"),
        ("GET", "/v1/models/alice/my-sdxl"),
        ("GET", "/v1/models/alice/my-sdxl/versions"),
        ("GET", f"/v1/models/alice/my-sdxl/versions/{trained.id}"),
        ("POST", "/v1/models/alice/my-sdxl/predictions"),
    ):
        answer = call(server, method, path, BOB, json={"input": IMAGE})
        assert answer.status_code == 404 == missing.status_code, (path, answer.text)
        assert set(answer.json()) == set(missing.json())
    assert [t.id for t in bob.trainings.list().results] == []
    with pytest.raises(replicate.exceptions.ReplicateError) as refused:
        bob.trainings.create(
            model="stability-ai/sdxl",
            version=GUIDE_VERSION,
            input={"input_images": "https://example.com/photos.zip"},
            destination="alice/my-sdxl",
        )
    assert refused.value.status == 404
    assert refused.value.detail == "The specified training destination does not exist"
    with pytest.raises(replicate.exceptions.ReplicateError) as version:
        bob.run(trained.output["version"], input=IMAGE)
    assert version.value.status == 422  # as a version that does not exist
    own = call(server, "POST", "/v1/models", BOB, json={"owner": "alice", "name": "x"})
    assert own.status_code == 403 and "'bob'" in own.json()["detail"]
    openai = call(
        server, "POST", "/v1/images/generations", BOB, json={**IMAGE, "model": "alice/my-sdxl"}
    )
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "model"
    assert [m["id"] for m in call(server, "GET", "/v1/models", BOB).json()["data"]] == ["sdxl"]
    checkpoints = call(server, "GET", "/sdapi/v1/sd-models", BOB).json()
    assert [m["title"] for m in checkpoints] == ["sdxl"]
    admin = call(server, "GET", f"/v1/trainings/{trained.id}", ROOT)
    assert admin.status_code == 200 and admin.json()["id"] == trained.id


def test_wrong_inputs_are_422_naming_each_and_nothing_is_queued(server, alice, destination):
    body = {
        "destination": "alice/my-sdxl",
        "input": {
            "input_images": "not a url",
            "resolution": 250,
            "lora_rank": "many",
            "max_train_step": 10,
        },
    }
    path = f"/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings"
    before = len(alice.trainings.list().results)
    answer = call(server, "POST", path, json=body)
    assert answer.status_code == 422
    fields = {item["field"] for item in answer.json()["invalid_fields"]}
    assert fields == {
        "input.input_images",
        "input.resolution",
        "input.lora_rank",
        "input.max_train_step",
    }
    assert "did you mean 'max_train_steps'?" in answer.text
    prefix = {"destination": "alice/my-sdxl", "input": {"input_images": "https://x/a.zip"}}
    prefix["input"]["caption_prefix"] = "a photo of"
    joined = call(server, "POST", path, json=prefix)
    assert joined.status_code == 422 and "token" in joined.json()["detail"]
    assert len(alice.trainings.list().results) == before


@pytest.mark.slow  # test_train checks the same interleaving and pixels on the engine
def test_a_prediction_runs_between_training_steps_with_an_idle_servers_pixels(
    server, alice, zipped, destination
):
    """Made before the training on the idle server, then again while it trains: the same
    bytes, and done while the training is still under way; the training goes on to its last
    step, each step once."""
    seeded = {**IMAGE, "prompt": "a red cube", "seed": 23}
    idle = image_bytes(alice.run(f"stability-ai/sdxl:{GUIDE_VERSION}", input=seeded))
    training = start_training(alice, zipped, 30)
    while "step 2/30" not in (training.logs or ""):
        training.reload()
    busy = image_bytes(alice.run(f"stability-ai/sdxl:{GUIDE_VERSION}", input=seeded))
    training.reload()
    assert training.status == "processing" and "step 30/30" not in training.logs
    assert busy == idle
    until_ended(training)
    assert training.status == "succeeded"
    steps = [line.split()[1] for line in training.logs.splitlines() if line.startswith("step ")]
    assert steps == [f"{n}/30" for n in range(1, 31)]


def test_a_signed_webhook_per_event_the_filter_lets_through(server, alice, zipped, destination):
    receiver = Receiver()
    try:
        hook = {"webhook": receiver.url + "/hook", "webhook_events_filter": ["start", "completed"]}
        training = start_training(alice, zipped, 2, **hook)
        receiver.wait_for(lambda reqs: any(b'"succeeded"' in body for *_, body in reqs))
        sent = signed_deliveries(receiver, "/hook", alice.webhooks.default.secret())
        assert [s["status"] for s in sent] == ["processing", "succeeded"]  # start, completed
        assert {s["id"] for s in sent} == {training.id}
        assert sent[-1]["output"]["version"] == f"alice/my-sdxl:{training.id}"
    finally:
        receiver.close()


def test_the_javascript_client_trains_from_a_url_and_cancels(server, zipped):
    files = Files()
    files.files["/photos.zip"] = zipped.read_bytes()
    try:
        env = {"REPLICATE_API_TOKEN": BOB, "REPLICATE_BASE_URL": server.base + "/v1"}
        args = ("bob", "js-sdxl", GUIDE_VERSION, files.url + "/photos.zip")
        done = node("trainings.cjs", *args, env=env)
    finally:
        files.close()
    assert done.returncode == 0, done.stderr + server.log()[-3000:]
    said = {line["what"]: line["value"] for line in map(json.loads, done.stdout.splitlines())}
    assert said["model"]["owner"] == "bob" and said["model"]["latest_version"] is None
    assert said["created"]["status"] == "starting"
    assert said["created"]["destination"] == "bob/js-sdxl"
    assert said["running"]["status"] == "processing"
    assert said["after"]["status"] == "canceled"  # after a step: its checkpoint is bob's
    checkpoint = said["after"]["output"]["checkpoint"]
    assert call(server, "GET", checkpoint.removeprefix(server.base), BOB).status_code == 200
    assert files.requested["/photos.zip"] == 1  # fetched once, when it was prepared
    assert call(server, "GET", "/v1/models/bob/js-sdxl/versions", BOB).json()["results"] == []


def test_a_predictions_replica_leaves_trainings_queued_and_caps_them_per_key(
    tiny_weights, tmp_path
):
    """SDXL_JOB_KINDS=predictions: trainings wait for a replica that takes them (a serving
    pool), predictions run; SDXL_MAX_TRAININGS_PER_KEY counts the queued ones."""
    env = {
        "SDXL_API_KEYS": f"alice:{ALICE}",
        "SDXL_JOB_KINDS": "predictions",
        "SDXL_MAX_TRAININGS_PER_KEY": "2",
    }
    with serving(tiny_weights, tmp_path, env) as srv:
        client = replicate.Client(api_token=ALICE, base_url=srv.base)
        client.models.create(owner="alice", name="later", visibility="private", hardware="gpu")
        path = f"/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings"
        body = {"destination": "alice/later", "input": {"input_images": "https://x.test/a.zip"}}
        first, second, third = (call(srv, "POST", path, json=body) for _ in range(3))
        assert (first.status_code, second.status_code, third.status_code) == (201, 201, 429)
        assert "SDXL_MAX_TRAININGS_PER_KEY" in third.json()["detail"]
        assert int(third.headers["Retry-After"]) > 0
        client.run(f"stability-ai/sdxl:{GUIDE_VERSION}", input=IMAGE)  # predictions run
        assert client.trainings.get(first.json()["id"]).status == "starting"
        metrics = requests.get(srv.base + "/metrics", timeout=10).text
        assert 'sdxl_trainings{state="queued"} 2.0' in metrics
        assert "sdxl_training_steps_per_second" not in metrics  # no training runs here
        assert client.trainings.cancel(first.json()["id"]).status == "canceled"  # at once
        assert call(srv, "POST", path, json=body).status_code == 201  # room for one again


def kept_checkpoint(server, training) -> tuple[int, str]:
    """The step and URL of a stopped training's checkpoint, as its log's last line says."""
    last = training.logs.splitlines()[-1]
    found = re.fullmatch(r"the checkpoint of step (\d+) is kept at (\S+) \(GET it with .*", last)
    assert found, training.logs[-2000:]
    return int(found.group(1)), found.group(2)


def test_a_cancelled_trainings_checkpoint_is_served_to_its_owner_only(
    server, alice, cancelled, folder
):
    training = alice.trainings.get(cancelled[0].id)
    step, url = kept_checkpoint(server, training)
    assert url == training.output["checkpoint"] and step >= 2  # the step it was cancelled at
    answer = call(server, "GET", f"/v1/trainings/{training.id}/checkpoint")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-tar"
    assert f'filename="checkpoint-step-{step}.tar"' in answer.headers["content-disposition"]
    files = folder / f"state-{server.port}" / "files" / "trainings" / training.id
    assert answer.content == (files / f"checkpoint-{step}.tar").read_bytes()
    downloaded = folder / "downloaded-checkpoint.tar"
    downloaded.write_bytes(answer.content)
    tensors, meta = checkpoint.read(downloaded)  # its safetensors and state load
    assert meta["step"] == step and meta["total"] == 5000 and "generator" in tensors
    missing = call(server, "GET", "/v1/trainings/nosuchtraining000000000000/checkpoint", BOB)
    refused = call(server, "GET", f"/v1/trainings/{training.id}/checkpoint", BOB)
    assert refused.status_code == 404 == missing.status_code
    assert set(refused.json()) == set(missing.json())
    assert call(server, "GET", f"/v1/trainings/{training.id}/checkpoint", ROOT).status_code == 200


@pytest.mark.parametrize("given", ["upload", "url"])
def test_a_new_training_goes_on_from_the_checkpoint(
    server, alice, zipped, cancelled, given, tmp_path
):
    """resume_from_checkpoint: the downloaded file (the client uploads it) or the URL itself;
    the new training's first step is the one after the checkpoint's."""
    step, url = kept_checkpoint(server, alice.trainings.get(cancelled[0].id))
    source = url
    if given == "upload":
        downloaded = tmp_path / "checkpoint.tar"
        downloaded.write_bytes(call(server, "GET", url.removeprefix(server.base)).content)
        source = open(downloaded, "rb")  # noqa: SIM115 (the client reads it as it uploads)
    resumed = start_training(alice, zipped, 5000, {"resume_from_checkpoint": source})
    if given == "upload":
        source.close()
        assert resumed.input["resume_from_checkpoint"].startswith(f"{server.base}/v1/files/")
    while not re.search(r"^step \d+/5000 ", resumed.logs or "", re.M):
        resumed.reload()
    alice.trainings.cancel(resumed.id)
    logs = until_ended(resumed).logs
    assert f"resumed from step {step} of 5000" in logs
    steps = [int(n) for n in re.findall(r"^step (\d+)/5000 ", logs, re.M)]
    assert steps[0] == step + 1 and steps == list(range(step + 1, step + 1 + len(steps)))


def test_another_tenants_checkpoint_url_is_refused(server, zipped, cancelled):
    bob = replicate.Client(api_token=BOB, base_url=server.base)
    bob.models.create(owner="bob", name="resume", visibility="private", hardware="gpu")
    url = f"{server.base}/v1/trainings/{cancelled[0].id}/checkpoint"
    with open(zipped, "rb") as archive:
        training = bob.trainings.create(
            model="stability-ai/sdxl",
            version=GUIDE_VERSION,
            input={"input_images": archive, **TRAIN, "resume_from_checkpoint": url},
            destination="bob/resume",
        )
    until_ended(training)
    assert training.status == "failed" and training.output is None
    assert training.error.startswith("resume_from_checkpoint: ")
    assert "no checkpoint of yours" in training.error


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def b64(text: str) -> bytes:
    return base64.b64decode(text)
