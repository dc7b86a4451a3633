"""What operators read: `GET /metrics` parsed with prometheus_client's own parser, and the JSON
log lines of SDXL_LOG_FORMAT=json. A real server process on loopback, the tiny model."""

from __future__ import annotations

import json

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.api_server import KEYS, Server, serving

pytestmark = pytest.mark.http

SMALL = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2}
LONG = {**SMALL, "num_inference_steps": 400}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_LOG_FORMAT": "json"}
    with serving(tiny_weights, tmp_path_factory.mktemp("operations"), env) as srv:
        yield srv


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = requests.get(server.base + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_generations_images_and_failures(server):
    before = scrape(server)
    assert value(before, "sdxl_server_status", status="ready") == 1.0
    assert value(before, "sdxl_model_load_seconds") > 0
    assert ("sdxl_resident_adapters", (("kind", "lora"),)) in before
    assert ("sdxl_shared_queue_depth", ()) in before
    assert not any(name == "sdxl_gpu_peak_memory_bytes" for name, _ in before)  # CPU: none

    assert server.post({**SMALL, "num_images_per_prompt": 2}).status_code == 200
    done = server.create_prediction({**SMALL, "refine": "base_image_refiner", "refine_steps": 1})
    assert server.wait_prediction(done["id"])["status"] == "succeeded"
    missing = server.create_prediction({**SMALL, "image": f"{server.base}/outputs/no/such.png"})
    assert server.wait_prediction(missing["id"])["status"] == "failed"

    after = scrape(server)

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sdxl_jobs_finished_total", status="succeeded") == 2
    assert moved("sdxl_jobs_finished_total", status="failed") == 1
    assert moved("sdxl_job_failures_total", kind="input") == 1
    assert moved("sdxl_job_failures_total", kind="internal") == 0
    assert moved("sdxl_images_generated_total", mode="txt2img") == 3
    plain = {"mode": "txt2img", "refine": "no_refiner"}
    refined = {"mode": "txt2img", "refine": "base_image_refiner"}
    assert moved("sdxl_generation_seconds_count", **plain) == 1
    assert moved("sdxl_generation_seconds_count", **refined) == 1
    assert moved("sdxl_generation_seconds_sum", **plain) > 0
    assert moved("sdxl_generation_seconds_bucket", le="+Inf", **plain) == 1


def test_metrics_show_the_queue_and_count_cancels(server):
    before = scrape(server)
    running = server.create_prediction(LONG)
    server.wait_prediction(running["id"], until=("processing",))
    waiting = server.create_prediction(LONG)
    for _ in range(200):  # the claim of the second one may be under way: wait for it to show
        busy = scrape(server)
        if value(busy, "sdxl_queue_depth") + value(busy, "sdxl_shared_queue_depth") >= 1:
            break
    assert value(busy, "sdxl_running_jobs") == 1
    assert value(busy, "sdxl_queue_depth") + value(busy, "sdxl_shared_queue_depth") >= 1
    for prediction in (waiting, running):
        server.api("POST", f"/v1/predictions/{prediction['id']}/cancel")
        assert server.wait_prediction(prediction["id"])["status"] == "canceled"
    after = scrape(server)
    assert value(after, "sdxl_running_jobs") == 0
    assert value(after, "sdxl_queue_depth") == 0
    assert value(after, "sdxl_shared_queue_depth") == 0
    cancels = value(after, "sdxl_job_failures_total", kind="canceled")
    assert cancels - value(before, "sdxl_job_failures_total", kind="canceled") == 2


def test_json_logs_carry_the_prediction_id_on_each_of_its_lines(server):
    prediction = server.create_prediction(SMALL)
    assert server.wait_prediction(prediction["id"])["status"] == "succeeded"
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    ours = [line for line in lines if line.get("prediction_id") == prediction["id"]]
    messages = [line["message"] for line in ours]
    assert any(m.startswith(f"job {prediction['id']} started") for m in messages), messages
    assert any(m.startswith(f"job {prediction['id']} done") for m in messages), messages
    # Every line of the engine's about this prediction carries its id (the access log's
    # lines name it in a path and belong to no prediction).
    about = [line for line in lines if prediction["id"] in line["message"]]
    for line in about:
        if line["logger"].startswith("sdxl"):
            assert line.get("prediction_id") == prediction["id"], line
