"""A server process of `python -m sdxl api` on loopback, for the API tests (real HTTP)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sdxl.net.ports import free_port
from support.helpers import SERVER_ENV

REPO = Path(__file__).resolve().parents[2]
GENERATE = "/v1/images/stable-diffusion-xl/generate"
KEYS = ("test-key-alpha", "test-key-beta")
START_TIMEOUT_S = 180
GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
ENDED = ("succeeded", "failed", "canceled")


# A stand-in for a slow disk: the server imports diffusers in its model-loading thread, and
# that import waits until the gate file exists.
GATE = """
import importlib.abc, os, sys, time
class _Gate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers":
            while not os.path.exists({gate!r}):
                time.sleep(0.05)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, _Gate())
"""


class Server:
    """A server process on loopback, its log file, and a few HTTP helpers."""

    def __init__(
        self,
        weights: Path,
        folder: Path,
        env: dict,
        args=(),
        gate: Path | None = None,
        preamble: str = "",
        port: int | None = None,
    ):
        self.gate = gate
        preamble += "" if gate is None else GATE.format(gate=str(gate))
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"server-{self.port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
        # One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads make the
        # tiny model's microsecond ops 10-50x slower whenever another process holds a core.
        clean.update(SERVER_ENV, SDXL_WEIGHTS_DIR=str(weights), OMP_NUM_THREADS="1")
        clean.update(SDXL_STATE_DIR=str(folder / f"state-{self.port}"))
        clean.update(SDXL_ALLOW_PRIVATE_URLS="1")  # the tests' files and webhooks are on loopback
        clean.update(env)
        argv = ["--port", str(self.port), *args]
        code = preamble + f"from sdxl.http.server import main; raise SystemExit(main({argv!r}))"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], cwd=REPO, env=clean, stdout=log, stderr=log
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return requests.get(self.base + "/health", timeout=10).json()

    def wait_for(self, condition, what: str, timeout: float = START_TIMEOUT_S) -> float:
        """Poll /health until `condition(report)`; returns the slowest /health answer seen."""
        deadline, slowest = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            started = time.monotonic()
            try:
                report = self.health()
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            slowest = max(slowest, time.monotonic() - started)
            if condition(report):
                return slowest
            time.sleep(0.05)
        pytest.fail(f"server never became {what}:\n{self.log()}")

    def wait_ready(self) -> None:
        self.wait_for(lambda h: h["status"] == "ready", "ready")

    def post(self, body, key: str | None = KEYS[0], **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if isinstance(body, dict):
            kwargs["json"] = body
        else:
            kwargs["data"] = body
            headers.setdefault("Content-Type", "application/json")
        return requests.post(self.base + GENERATE, headers=headers, timeout=300, **kwargs)

    def api(self, method: str, path: str, body=None, key: str = KEYS[0], **kwargs):
        """A call to Replicate's API (/v1/...) with `key`."""
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.base + path, json=body, headers=headers, timeout=60, **kwargs
        )

    def create_prediction(self, inputs: dict, **extra) -> dict:
        body = {"version": GUIDE_VERSION, "input": inputs, **extra}
        response = self.api("POST", "/v1/predictions", body)
        assert response.status_code == 201, response.text
        return response.json()

    def prediction(self, prediction_id: str) -> dict:
        response = self.api("GET", f"/v1/predictions/{prediction_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_prediction(self, prediction_id: str, until=ENDED, timeout: float = 180) -> dict:
        """The prediction once its status is one of `until`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.prediction(prediction_id)
            if found["status"] in until:
                return found
            time.sleep(0.1)
        pytest.fail(f"prediction {prediction_id} never reached {until}: {found}\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def serving(weights: Path, folder: Path, env: dict, **options) -> Iterator[Server]:
    """A server, ready, for the block; stopped after it."""
    server = Server(weights, folder, env, **options)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
