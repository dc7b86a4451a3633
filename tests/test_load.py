"""Load and faults on real servers: bursts served or refused cleanly (409/429 with Retry-After),
none lost or run twice, in order; SIGTERM with a backlog loses nothing; a webhook
receiver that is down or slow never delays generation, and its deliveries are retried, then
given up with a log line. SIGTERM with a backlog stops after the running job; the backlog
waits in the store for the next start."""

from __future__ import annotations

import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from support.api_server import GENERATE, KEYS, Server
from support.helpers import wait_until

from sdxl.net.ports import free_port

pytestmark = pytest.mark.http

GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
SMALL = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 3}


def burst(count: int, call) -> list:
    barrier = threading.Barrier(count)

    def one(i):
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_cog_server_burst_is_served_or_refused_with_409(cog_server):
    server = cog_server
    responses = burst(
        8,
        lambda i: requests.post(
            server.base + "/predictions", json={"input": {**SMALL, "seed": i}}, timeout=120
        ),
    )
    assert server.settles_ready()
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 409} and 200 in codes, codes
    for i, response in enumerate(responses):
        if response.status_code == 200:
            body = response.json()
            assert body["status"] == "succeeded" and body["metrics"]["seeds"] == [i]


@pytest.fixture(scope="module")
def api(tiny_weights, tmp_path_factory):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_QUEUE_SIZE": "3"}
    server = Server(tiny_weights, tmp_path_factory.mktemp("load-api"), env)
    server.wait_ready()
    yield server
    server.stop()


def test_datacrunch_burst_is_served_or_refused_with_429(api):
    responses = burst(
        12,
        lambda i: requests.post(
            api.base + GENERATE, json={**SMALL, "seed": i}, headers=AUTH, timeout=300
        ),
    )
    served = [i for i, r in enumerate(responses) if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert len(served) >= 4  # the running one and SDXL_QUEUE_SIZE=3 waiting, at least
    for i in served:
        assert responses[i].json()["seeds"] == [i]
    ids = [responses[i].headers["X-Request-Id"] for i in served]
    assert len(set(ids)) == len(ids)
    log = api.log()
    for job in ids:  # each accepted job ran exactly once
        assert len(re.findall(rf"job {job} done", log)) == 1


def test_replicate_burst_is_queued_and_run_in_order(api):
    responses = burst(
        16,
        lambda i: requests.post(
            api.base + "/v1/predictions",
            json={"version": GUIDE_VERSION, "input": {**SMALL, "seed": i}},
            headers=AUTH,
            timeout=60,
        ),
    )
    assert [r.status_code for r in responses] == [201] * 16  # queued in the store, not refused
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 16
    deadline = time.monotonic() + 300
    while True:
        finished = [
            requests.get(f"{api.base}/v1/predictions/{i}", headers=AUTH, timeout=10).json()
            for i in ids
        ]
        if all(p["status"] == "succeeded" for p in finished) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [p["status"] for p in finished] == ["succeeded"] * 16
    listed = requests.get(api.base + "/v1/predictions", headers=AUTH, timeout=10).json()
    arrival = [p["id"] for p in reversed(listed["results"])]  # the list is newest first
    started = {p["id"]: when(p["started_at"]) for p in finished}
    in_order = [started[i] for i in arrival if i in started]
    assert in_order == sorted(in_order)  # first come, first served
    log = api.log()
    assert all(len(re.findall(rf"job {i} done", log)) == 1 for i in ids)  # none run twice


def test_sigterm_with_a_backlog_stops_after_the_running_job_and_loses_nothing(
    tiny_weights, tmp_path
):
    """SIGTERM while the first of eight stored predictions runs and a DataCrunch request waits in
    memory: new requests and the waiting one get 503 with Retry-After, the running prediction
    finishes, the process exits 0 without running the backlog (what it had claimed goes back to
    the queue), and every prediction runs exactly once: the rest on the next start."""
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_STATE_DIR": str(tmp_path / "state")}
    server = Server(tiny_weights, tmp_path, env)
    try:
        server.wait_ready()
        # Holds the GPU (about 5 s on 2 cores) while the DataCrunch request queues and SIGTERM
        # arrives.
        running = {**SMALL, "num_inference_steps": 100}
        ids = [
            requests.post(
                server.base + "/v1/predictions",
                json={"version": GUIDE_VERSION, "input": {**(SMALL if i else running), "seed": i}},
                headers=AUTH,
                timeout=30,
            ).json()["id"]
            for i in range(8)
        ]
        server.wait_for(lambda h: h["running"] == 1, "busy")
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(server.post, SMALL)  # behind the stored backlog, in memory
            server.wait_for(lambda h: h["queued"] >= 8, "the DataCrunch request queued")
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for(lambda h: h["status"] == "draining", "draining", timeout=30)
            answered = waiting.result(timeout=120)
        assert answered.status_code == 503, answered.text
        assert "stopping" in answered.text and int(answered.headers["Retry-After"]) > 0
        late = requests.post(
            server.base + "/v1/predictions",
            json={"version": GUIDE_VERSION, "input": SMALL},
            headers=AUTH,
            timeout=30,
        )
        assert late.status_code == 503 and int(late.headers["Retry-After"]) > 0
        assert server.proc.wait(timeout=300) == 0, server.log()[-3000:]
    finally:
        server.stop()
    first_run = server.log()
    assert len(re.findall(r"job \w+ done", first_run)) == 1, first_run[
        -3000:
    ]  # only the running one
    again = Server(tiny_weights, tmp_path, env)
    try:
        again.wait_ready()
        for prediction_id in ids:
            assert again.wait_prediction(prediction_id)["status"] == "succeeded"
        logs = first_run + again.log()
        for prediction_id in ids:
            assert logs.count(f"job {prediction_id} done") == 1, prediction_id
    finally:
        again.stop()


class GatedReceiver:
    """A webhook receiver that takes each delivery and answers none until `open()`."""

    def __init__(self):
        self.answered = 0
        self.gate = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.gate.wait(120)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.answered += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def open(self) -> None:
        self.gate.set()

    def close(self):
        self.gate.set()
        self.server.shutdown()


def test_webhook_receivers_down_or_slow_never_delay_generation(api):
    held = GatedReceiver()
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    try:
        finished = []
        for i, webhook in enumerate((held.url, down, held.url, down)):
            body = {"version": GUIDE_VERSION, "input": {**SMALL, "seed": i}, "webhook": webhook}
            if webhook == down:  # one delivery to give up (each is retried for 7.5 s)
                body["webhook_events_filter"] = ["completed"]
            response = requests.post(
                api.base + "/v1/predictions",
                json=body,
                headers={**AUTH, "Prefer": "wait"},
                timeout=120,
            )
            finished.append(response.json())
        # Generation did not wait for any delivery: all four ran while the held receiver had
        # answered none of its deliveries (and the other receiver does not exist).
        assert [p["status"] for p in finished] == ["succeeded"] * 4
        assert held.answered == 0
        held.open()  # now every delivery to it goes through: start and completed, two each
        wait_until(lambda: held.answered >= 4, "four deliveries answered", timeout=120)
        wait_until(lambda: "gave up the completed webhook" in api.log(), "given up", timeout=120)
        assert re.search(
            r"gave up the completed webhook of prediction \w+ to http://127\.0\.0\.1", api.log()
        )
    finally:
        held.close()
