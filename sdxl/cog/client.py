"""`python -m sdxl predict`: one prediction through the real server, like `cog predict`.

It starts `python -m sdxl serve` on a free loopback port, waits until the predictor is
READY, sends the inputs (image files as data URIs; `replicate_weights` as the absolute path of
a local file, whose folder the server is allowed to read: `server_env`), writes the outputs as
files and prints their paths. Errors exit non-zero with the server's message.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from sdxl.cog.serve import ROOT
from sdxl.config import COG_INPUTS
from sdxl.inputs.command_line import typed_value
from sdxl.inputs.weights_source import local_path
from sdxl.net.ports import free_port
from sdxl.settings.specs import read_one
from sdxl.settings.tree import CogGroup

# SDXL_READY_TIMEOUT: seconds to wait for the server (real weights load slowly)
READY_TIMEOUT = read_one(CogGroup, "ready_timeout")
# Inputs that name a file the predictor reads itself (never sent as data: a tar of gigabytes).
LOCAL_FILE_INPUTS = ("replicate_weights",)
FAILED_PREFIX = "Prediction failed: "


class ClientError(RuntimeError):
    """Something to print to stderr before exiting non-zero."""


def parse_inputs(pairs: list[str], kinds: dict[str, str]) -> dict:
    """`-i name=value` pairs -> JSON input; `@path` reads a file; types follow the schema."""
    inputs: dict = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"-i {pair!r}: expected name=value")
        inputs[name] = _value(name, value, kinds.get(name, "string"))
    return inputs


def _value(name: str, text: str, kind: str):
    if name in LOCAL_FILE_INPUTS:
        return local_file(name, text)
    if text.startswith("@"):
        return data_uri(Path(text[1:]))
    try:
        return typed_value(name, text, kind)
    except ValueError as err:
        raise ClientError(str(err)) from err


def local_file(name: str, text: str) -> str:
    """`@path`, a path or a file:// URL as the file's absolute path (the server runs in another
    folder); a URL as given."""
    path = text[1:] if text.startswith("@") else local_path(text)
    if path is None or not path.strip():
        return text
    full = Path(path).expanduser().absolute()
    if not full.is_file():
        raise ClientError(f"-i {name}={text!r}: {full} is not a file")
    return str(full)


def failure(error: object) -> str:
    """coglet's error text, its "Prediction failed: " said once (coglet 0.23.1 says it twice)."""
    text = str(error)
    while text.startswith(FAILED_PREFIX + FAILED_PREFIX):
        text = text[len(FAILED_PREFIX) :]
    return text if text.startswith(FAILED_PREFIX) else FAILED_PREFIX + text


def data_uri(path: Path) -> str:
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise ClientError(f"cannot read {path}: {err.strerror}") from err
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def _request(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_ready(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ClientError(f"the server exited ({server.returncode}) before it was ready")
        try:
            _, health = _request(base + "/health-check", timeout=2)
        except OSError:
            time.sleep(0.2)
            continue
        status = health.get("status")
        if status == "READY":
            return
        if status in ("SETUP_FAILED", "DEFUNCT"):
            logs = health.get("setup", {}).get("logs", "")
            raise ClientError(f"setup failed:\n{logs}")
        time.sleep(0.2)
    raise ClientError(f"the server was not ready after {READY_TIMEOUT:.0f} s")


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def write_outputs(outputs: list, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, uri in enumerate(outputs):
        header, _, payload = uri.partition(",")
        mime = header.removeprefix("data:").split(";")[0]
        ext = mimetypes.guess_extension(mime) or ".bin"
        path = folder / f"output.{i}{'.jpg' if ext == '.jpeg' else ext}"
        path.write_bytes(base64.b64decode(payload))
        paths.append(path)
    return paths


def server_env(inputs: dict) -> dict[str, str]:
    """The environment of the server this command starts: its own, with the folders of the
    local files its user named added to SDXL_LOCAL_WEIGHTS_DIRS (the server reads no other)."""
    env = dict(os.environ)
    folders = [
        str(Path(inputs[name]).parent)
        for name in LOCAL_FILE_INPUTS
        if isinstance(inputs.get(name), str) and os.path.isabs(inputs[name])
    ]
    if folders:
        given = env.get("SDXL_LOCAL_WEIGHTS_DIRS", "")
        env["SDXL_LOCAL_WEIGHTS_DIRS"] = os.pathsep.join([*folders, *filter(None, [given])])
    return env


def predict(pairs: list[str], out_dir: Path) -> int:
    inputs = parse_inputs(pairs, {name: spec.kind for name, spec in COG_INPUTS.items()})
    port = free_port()
    cmd = [sys.executable, "-m", "sdxl", "serve", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as server_log:
        server = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=server_env(inputs),
            start_new_session=True,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(base, server)
            status, body = _request(base + "/predictions", {"input": inputs}, timeout=None)
        except ClientError as err:
            server_log.seek(0)
            raise ClientError(
                f"{err}\nserver log (last lines):\n{_tail(server_log.read())}"
            ) from err
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
    if body.get("logs"):
        print(body["logs"], file=sys.stderr, end="")
    if status != 200:
        raise ClientError(f"the server refused the input ({status}): {json.dumps(body)}")
    if body.get("status") == "canceled":
        raise ClientError("the prediction was canceled")
    if body.get("status") != "succeeded":
        raise ClientError(failure(body.get("error")))
    for path in write_outputs(body["output"], out_dir):
        print(path)
    return 0
