"""Run one server and schemathesis against it, inside a network namespace with only loopback.

    unshare -n python tests/support/fuzz_in_netns.py {cog|api} WEIGHTS WORKDIR EXAMPLES \
        [SECONDS [PHASES]]

(tests/test_fuzz.py runs it.) It first proves that nothing beyond loopback can be reached,
brings loopback up, starts `python -m sdxl serve` or `python -m sdxl api` with low caps,
fuzzes every operation of the server's own OpenAPI document (positive and negative cases; by
default every schemathesis phase: coverage, fuzzing, stateful),
then checks that the server still answers. Prints one JSON line: the run's summary.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import Request, urlopen

REPO = Path(__file__).resolve().parents[2]
KEY = "fuzz-key"
CAPS = {"SDXL_MAX_STEPS": "2", "SDXL_MAX_PIXELS": "65536", "SDXL_MAX_OUTPUTS": "1"}


def isolated() -> bool:
    """True when an outbound connection cannot even be attempted."""
    try:
        socket.create_connection(("1.1.1.1", 80), timeout=2).close()
    except OSError:
        return True
    return False


def wait(url: str, headers: dict, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urlopen(Request(url, headers=headers), timeout=2) as response:
                body = json.loads(response.read() or b"{}")
                if body.get("status") in ("READY", "ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server at {url} never became ready")


def main() -> int:
    kind, weights, workdir, examples = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 900  # the fuzzer's own bound
    phases = sys.argv[6] if len(sys.argv) > 6 else "coverage,fuzzing,stateful"
    assert isolated(), "outbound connections are possible: refusing to fuzz"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = 8500
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
    env.update(CAPS, SDXL_WEIGHTS_DIR=weights, SDXL_DTYPE="float32", OMP_NUM_THREADS="1")
    env.update(TMPDIR=str(workdir), SDXL_STATE_DIR=str(workdir / "state"), SDXL_API_KEYS=KEY)
    command = "serve" if kind == "cog" else "api"
    server = subprocess.Popen(
        [sys.executable, "-m", "sdxl", command, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=open(workdir / "server.log", "wb"),  # noqa: SIM115 (the process outlives this)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    probe = "/health-check" if kind == "cog" else "/ready"
    headers = {"Authorization": f"Bearer {KEY}"}
    report = workdir / "schemathesis.json"
    try:
        wait(base + probe, headers)
        st = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json"]
        st += ["--checks", "not_a_server_error,unsupported_method", "--mode", "all"]
        st += ["--phases", phases]
        st += ["--max-examples", examples, "--generation-database", "none", "--workers", "1"]
        st += ["--request-timeout", "120", "--no-color", "--seed", "1"]
        st += ["--header", f"Authorization: Bearer {KEY}"]
        st += ["--report", "json", "--report-json-path", str(report)]
        hooks = {"SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": str(Path(__file__).parent)}
        fuzz_env = {**os.environ, **hooks} if kind == "cog" else None
        done = subprocess.run(
            st, cwd=workdir, capture_output=True, text=True, timeout=seconds, env=fuzz_env
        )
        wait(base + probe, headers, seconds=60)  # still answering after the run
    finally:
        server.terminate()
        server.wait(30)
    summary = json.loads(report.read_text())
    print(
        json.dumps(
            {
                "exit_code": done.returncode,
                "generated": summary["test_cases"]["generated"],
                "with_failures": summary["test_cases"]["with_failures"],
                "operations": summary["operations"]["tested"],
                "output_tail": done.stdout[-3000:],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
