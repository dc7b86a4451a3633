"""Test helpers for real server processes on loopback: start, wait, call, and a receiver."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from PIL import Image

from support.helpers import SERVER_ENV

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    base: str
    process: subprocess.Popen
    log: Path
    tmpdir: Path
    statuses: list[str] = field(default_factory=list)  # health statuses seen while starting

    def predict(self, timeout: float = 120, headers: dict | None = None, **inputs):
        """POST a prediction; a 409 (coglet's slot not yet back from the previous prediction,
        for a moment after its answer) is retried, as a Cog client retries it."""
        deadline = time.monotonic() + 10
        while True:
            response = requests.post(
                self.base + "/predictions", json={"input": inputs}, timeout=timeout, headers=headers
            )
            if response.status_code != 409 or time.monotonic() > deadline:
                return response
            time.sleep(0.05)

    def health(self) -> str:
        return requests.get(self.base + "/health-check", timeout=5).json()["status"]

    def settles_ready(self, timeout: float = 30) -> bool:
        """True once /health-check says READY: coglet reports BUSY for a moment after a
        prediction's answer, until its slot is back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == "READY":
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(weights: Path, workdir: Path, *extra: str, timeout: float = 120) -> Server:
    """`python -m sdxl serve` on a free port, with its own TMPDIR; waits for READY."""
    from sdxl.net.ports import free_port

    port = free_port()
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    # The test device, float32, no fast-path switch: as the pixels it is compared with.
    env = dict(os.environ, **SERVER_ENV, SDXL_WEIGHTS_DIR=str(weights), TMPDIR=str(tmpdir))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    cmd = [sys.executable, "-m", "sdxl", "serve", "--port", str(port), *extra]
    with log.open("w") as out:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, tmpdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            status = server.health()
        except (requests.ConnectionError, ValueError):
            time.sleep(0.05)
            continue
        server.statuses.append(status)
        if status == "READY":
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def decode_output(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/"), header[:40]
    return image_from_bytes(base64.b64decode(payload))


def image_from_bytes(payload: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(payload))
    img.load()
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def output_bytes(response) -> list[bytes]:
    body = response.json()
    assert body["status"] == "succeeded", body.get("error")
    return [base64.b64decode(uri.partition(",")[2]) for uri in body["output"]]


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


class Receiver:
    """A loopback HTTP server that records every request and serves files it was given."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.files: dict[str, tuple[str, bytes]] = {}
        self.event = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.event:
                    receiver.requests.append((self.command, self.path, dict(self.headers), body))
                    receiver.event.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                if self.path not in receiver.files:
                    self.send_error(404)
                    return
                mime, payload = receiver.files[self.path]
                self.send_response(200)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_POST = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 60):
        with self.event:
            if not self.event.wait_for(lambda: predicate(self.requests), timeout=timeout):
                raise AssertionError(f"receiver never got what was expected: {self.summary()}")

    def summary(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests]

    def json_bodies(self, path: str) -> list[dict]:
        return [json.loads(b) for m, p, _, b in self.requests if p == path and m == "POST"]

    def close(self):
        self.server.shutdown()


def signed_deliveries(receiver: Receiver, path: str, secret: str) -> list[dict]:
    """The bodies `receiver` got at `path`, each checked with the official Python client's
    validator (it raises unless the signature holds, and must refuse a changed body)."""
    import json

    import pytest
    import replicate

    validate = replicate.webhook.Webhooks.validate
    bodies = []
    for _method, where, headers, body in receiver.requests:
        if where != path:
            continue
        headers = {k.lower(): v for k, v in headers.items()}
        validate(headers=headers, body=body.decode(), secret=secret)
        with pytest.raises(replicate.webhook.InvalidSignatureError):
            validate(headers=headers, body=body.decode() + " ", secret=secret)
        bodies.append(json.loads(body))
    return bodies
