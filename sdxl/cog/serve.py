"""`python -m sdxl serve`: Cog's own prediction server (coglet) for predict.py:Predictor.

coglet runs on a private loopback port. In front of it sits a small pass-through proxy that
does two things coglet does not, before coglet validates the request as usual:
- a numeric string for a numeric input (`"0.8"`, `"20"`, as Replicate's JavaScript examples
  send) becomes the number, so coglet then checks it against the same bounds;
- a file input must be an http(s) URL or a data URI: a bare server path is refused (422);
- `null` for an input means "not given" (coglet refuses null even for Optional inputs).
Everything else (paths, headers, status codes, bodies) passes through unchanged.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sdxl.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / ".cog" / "openapi_schema.json"
PREDICTOR = "predict.py:Predictor"
MAX_BODY = 64 * 1024 * 1024  # data URIs of two 4-megapixel PNGs fit comfortably
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}
FILE_SCHEMES = ("http://", "https://", "data:")
STARTING = json.dumps({"status": "STARTING"}).encode()
_INT = re.compile(r"[+-]?\d{1,19}")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


def input_kinds(schema: dict) -> dict[str, str]:
    """Input name -> "integer" | "number" | "uri" | other, from the OpenAPI Input schema."""
    kinds = {}
    for name, prop in schema["components"]["schemas"]["Input"]["properties"].items():
        kinds[name] = "uri" if prop.get("format") == "uri" else prop.get("type", "")
    return kinds


def _number(text: str, kind: str):
    """The number a numeric string spells, or None when it spells none."""
    text = text.strip()
    if kind == "integer" and _INT.fullmatch(text):
        return int(text)
    if kind == "number" and _FLOAT.fullmatch(text):
        return float(text)
    return None


def _valid_data_uri(uri: str) -> bool:
    header, comma, payload = uri.partition(",")
    if not comma:
        return False
    if not header.endswith(";base64"):
        return True  # percent-encoded payload
    try:
        base64.b64decode(payload, validate=True)
    except ValueError:
        return False
    return True


class RequestRefused(ValueError):
    """The proxy answers 422 itself; `detail` has coglet's error shape."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.detail = [{"loc": ["body", "input", field], "msg": message, "type": "value_error"}]


def rewrite_input(body: bytes, kinds: dict[str, str]) -> bytes:
    """Coerce numeric strings and refuse non-URL file inputs; other bodies pass unchanged."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body  # not JSON: coglet gives its own error
    inputs = doc.get("input") if isinstance(doc, dict) else None
    if not isinstance(inputs, dict):
        return body
    for name in [n for n, v in inputs.items() if v is None and kinds.get(n) is not None]:
        del inputs[name]  # null means "not given": coglet would refuse it for Optional inputs
    for name, value in inputs.items():
        kind = kinds.get(name)
        if kind == "uri" and value is not None:
            if not isinstance(value, str) or not value.startswith(FILE_SCHEMES):
                raise RequestRefused(
                    name,
                    f"{name} must be an http(s) URL or a data URI; server paths are not read",
                )
            if value.startswith("data:") and not _valid_data_uri(value):
                raise RequestRefused(name, f"{name} is not a valid data URI (bad base64?)")
        elif kind in ("integer", "number") and isinstance(value, str):
            number = _number(value, kind)
            if number is not None:
                inputs[name] = number
    return json.dumps(doc).encode()


def make_handler(upstream_port: int, kinds: dict[str, str]):
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # coglet logs requests itself
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                self._reply(413, [("Content-Type", "application/json")], b'{"detail":"too large"}')
                return
            body = self._body()
            if self.command in ("POST", "PUT") and self.path.startswith("/predictions"):
                try:
                    body = rewrite_input(body, kinds)
                except RequestRefused as err:
                    data = json.dumps({"detail": err.detail}).encode()
                    self._reply(422, [("Content-Type", "application/json")], data)
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port)
            try:
                upstream.request(self.command, self.path, body, headers)
                response = upstream.getresponse()
                self._reply(response.status, response.getheaders(), response.read())
            except OSError as err:
                if self.path == "/health-check":  # coglet not listening yet: still starting
                    self._reply(200, [("Content-Type", "application/json")], STARTING)
                    return
                message = json.dumps({"detail": f"prediction server unavailable: {err}"})
                self._reply(502, [("Content-Type", "application/json")], message.encode())
            finally:
                upstream.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    return Proxy


class StaleSchema(RuntimeError):
    """The committed schema does not match predict.py."""


def current_schema() -> dict:
    """The schema coglet validates against, checked against predict.py (never rewritten: it is
    a tracked file that `cog build` writes and `python -m sdxl schema` regenerates)."""
    from sdxl.cog.schema import build_schema

    schema = build_schema(ROOT / "predict.py")
    current = json.loads(SCHEMA_FILE.read_text()) if SCHEMA_FILE.exists() else None
    if current != schema:
        raise StaleSchema(
            f"{SCHEMA_FILE} is missing or out of date with predict.py; run "
            "`python -m sdxl schema` and commit the result"
        )
    return schema


def start_coglet(port: int, upload_url: str | None) -> subprocess.Popen:
    env = dict(os.environ, COG_PREDICT_TYPE_STUB=PREDICTOR, PORT=str(port))
    # coglet starts its worker as `python` from PATH: make that this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
    if upload_url is not None:
        cmd += ["--upload-url", upload_url]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def serve(host: str, port: int, upload_url: str | None = None) -> int:
    """Run coglet behind the proxy until SIGTERM/SIGINT or until coglet exits."""
    kinds = input_kinds(current_schema())
    inner = free_port()
    coglet = start_coglet(inner, upload_url)
    proxy = ThreadingHTTPServer((host, port), make_handler(inner, kinds))
    proxy.daemon_threads = True

    def stop(*_):
        threading.Thread(target=proxy.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=lambda: (coglet.wait(), stop()), daemon=True).start()
    print(f"serving {PREDICTOR} on http://{host}:{port} (coglet on 127.0.0.1:{inner})")
    try:
        proxy.serve_forever()
    finally:
        proxy.server_close()
        if coglet.poll() is None:
            coglet.send_signal(signal.SIGTERM)
            try:
                coglet.wait(timeout=30)
            except subprocess.TimeoutExpired:
                coglet.kill()
                coglet.wait()
    return 0 if coglet.returncode in (0, -signal.SIGTERM) else coglet.returncode or 1
