"""State isolation: after a long random sequence of predictions (modes, schedulers, DeepCache,
LoRAs on and off with resident adapters switching, a fine-tuned UNet, trained tokens, the
watermark on and off, failures and cancellations), a fixed probe gives the same bytes as on a
fresh server."""

from __future__ import annotations

import base64
import functools
import io
import random
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import torch
from safetensors.torch import save
from support.api_server import ENDED, GENERATE, KEYS, Server
from support.helpers import wait_until
from support.loras import kohya_lora, old_format_lora, save_safetensors, trained_token_files

pytestmark = pytest.mark.http

GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
SMALL = {"prompt": "a photo of TOK", "width": 256, "height": 256, "num_inference_steps": 3}
PROBE = {"prompt": "a photo of <s0> TOK", "width": 256, "height": 256, "seed": 99}
PROBE |= {"num_inference_steps": 4, "refine": "expert_ensemble_refiner"}
DATACRUNCH_PROBE = {"prompt": "a cat <s0>", "width": 256, "height": 256, "seed": 5}
DATACRUNCH_PROBE |= {"num_inference_steps": 4}
SCHEDULERS = ["DDIM", "DPMSolverMultistep", "KarrasDPM", "K_EULER_ANCESTRAL", "K_EULER", "PNDM"]
SCHEDULERS += ["LCM", "TCD"]


def tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as out:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weights_server(models, tmp_path_factory):
    """Trained weights on loopback: two trainer LoRAs (with tokens), a kohya LoRA file, a
    full fine-tune."""
    folder = tmp_path_factory.mktemp("trained")
    unet = models.base.unet
    tokens = trained_token_files(models)
    (folder / "a.tar").write_bytes(
        tar({"lora.safetensors": save(old_format_lora(unet, seed=1)), **tokens})
    )
    (folder / "b.tar").write_bytes(tar({"lora.safetensors": save(old_format_lora(unet, seed=2))}))
    save_safetensors(folder / "c.safetensors", kohya_lora(unet, seed=3)[0])
    g = torch.Generator().manual_seed(4)
    tuned = {
        k: v + 0.05 * torch.randn(v.shape, generator=g)
        for k, v in unet.state_dict().items()
        if "norm" not in k
    }
    (folder / "ft.tar").write_bytes(tar({"unet.safetensors": save(tuned), **tokens}))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def start(tiny_weights, folder) -> Server:
    folder.mkdir(parents=True)
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_MAX_RESIDENT_LORAS": "2", "SDXL_MAX_RESIDENT_UNETS": "1"}
    server = Server(tiny_weights, folder, env)
    server.wait_ready()
    return server


def replicate(server, inputs: dict, wait: bool = True) -> dict:
    headers = {**AUTH, "Prefer": "wait"} if wait else AUTH
    response = requests.post(
        server.base + "/v1/predictions",
        json={"version": GUIDE_VERSION, "input": inputs},
        headers=headers,
        timeout=300,
    )
    assert response.status_code == 201, response.text
    return response.json()


def probes(server) -> tuple[bytes, bytes]:
    body = replicate(server, PROBE)
    assert body["status"] == "succeeded", body["error"]
    datacrunch = requests.post(
        server.base + GENERATE, json=DATACRUNCH_PROBE, headers=AUTH, timeout=120
    )
    assert datacrunch.status_code == 200
    image = base64.b64decode(body["output"][0].partition(",")[2])
    return image, base64.b64decode(datacrunch.json()["images"][0])


KINDS = ("plain", "trained", "datacrunch", "fail", "cancel")


def random_step(server, rng: random.Random, weights: str, kind: str | None = None) -> str:
    kind = kind or rng.choice(
        ["plain", "plain", "trained", "trained", "datacrunch", "fail", "cancel"]
    )
    inputs = {**SMALL, "seed": rng.randrange(1000), "scheduler": rng.choice(SCHEDULERS)}
    inputs |= {"apply_watermark": rng.random() < 0.5, "num_outputs": rng.choice([1, 2])}
    inputs |= {
        "refine": rng.choice(["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
    }
    inputs |= {"refine_steps": 2, "timestep_spacing": rng.choice(["leading", "trailing", None])}
    inputs |= {"cache_interval": rng.choice([1, 1, 2, 3])}  # DeepCache patches module forwards
    if inputs["refine"] == "expert_ensemble_refiner":
        inputs["num_inference_steps"] = 8  # some schedulers leave the refiner no step at 3
    if kind == "trained":
        inputs["replicate_weights"] = (
            f"{weights}/{rng.choice(['a.tar', 'b.tar', 'c.safetensors', 'ft.tar'])}"
        )
        inputs["lora_scale"] = rng.choice([0.3, 0.6, 1.2])
    if kind in ("plain", "trained"):
        body = replicate(server, {k: v for k, v in inputs.items() if v is not None})
        assert body["status"] == "succeeded", body["error"]
    elif kind == "datacrunch":
        body = {
            **SMALL,
            "seed": 3,
            "lora_name": rng.choice(["offset", None]),
            "scheduler": "EulerA",
        }
        response = requests.post(
            server.base + GENERATE,
            json={k: v for k, v in body.items() if v},
            headers=AUTH,
            timeout=120,
        )
        assert response.status_code == 200
    elif kind == "fail":
        broken = rng.choice([{"width": 260}, {"replicate_weights": f"{weights}/missing.tar"}])
        assert replicate(server, {**SMALL, **broken})["status"] == "failed"
    else:
        long = {**SMALL, "num_inference_steps": 300, "replicate_weights": f"{weights}/a.tar"}
        started = replicate(server, long, wait=False)
        url = f"{server.base}/v1/predictions/{started['id']}"

        def status() -> str:
            return requests.get(url, headers=AUTH, timeout=10).json()["status"]

        wait_until(lambda: status() != "starting", "started")
        requests.post(url + "/cancel", headers=AUTH, timeout=30)
        ended = wait_until(lambda: (now := status()) in ENDED and now, "ended")
        assert ended in ("canceled", "succeeded")  # a cancel may land after the last step
    return kind


@pytest.mark.parametrize(
    "length", [8, pytest.param(60, marks=pytest.mark.slow)], ids=["8-steps", "60-steps"]
)
def test_a_long_random_sequence_leaves_no_trace(tiny_weights, tmp_path, weights_server, length):
    """Every kind of step once, in a random order, then random ones (`length` in all): the
    probes then answer what they answered first, on the server still fresh."""
    server = start(tiny_weights, tmp_path / "used")
    try:
        expected = probes(server)
        rng = random.Random(7)
        order = rng.sample(KINDS, len(KINDS)) + [None] * (length - len(KINDS))
        kinds = [random_step(server, rng, weights_server, kind) for kind in order]
        assert set(KINDS) <= set(kinds), kinds
        assert probes(server) == expected
    finally:
        server.stop()
