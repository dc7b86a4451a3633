"""Resources over many predictions: memory does not grow, and temp files, output folders
(coglet's per-prediction folders included) and stored predictions stay within their bounds.
Real servers on loopback, 200 predictions each, the tiny model: about 80 s, so in the slow tier."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import requests
from support.api_server import GENERATE, KEYS, Server
from support.cog_server import start_server

from sdxl.cog.outputs import COGLET_PREDICTIONS, KEEP_COGLET_FOLDERS

pytestmark = [pytest.mark.http, pytest.mark.slow]

PREDICTIONS = 200
WARM = 20  # predictions before the first measurement: allocator caches filled
RSS_GROWTH_LIMIT = 64 << 20  # bytes of resident memory allowed to appear after the warm-up
SMALL = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 1}
GUIDE_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def total_rss(pid: int) -> int:
    total = 0
    for process in [pid, *descendants(pid)]:
        try:
            total += rss(process)
        except (OSError, AssertionError):
            if Path(f"/proc/{process}").exists():  # only a process that just ended is skipped
                raise
    return total


def test_cog_server_over_200_predictions(tiny_weights, tmp_path):
    server = start_server(tiny_weights, tmp_path)
    try:
        before = None
        for i in range(PREDICTIONS):
            if i == WARM:
                before = total_rss(server.process.pid)
            assert server.settles_ready()
            body = server.predict(**SMALL, seed=i).json()
            assert body["status"] == "succeeded", body.get("error")
        after = total_rss(server.process.pid)
        leftovers = [p.name for p in server.tmpdir.iterdir()]
        coglet_folders = list(COGLET_PREDICTIONS.glob("pred_*"))
    finally:
        server.stop()
    growth = after - before
    print(
        f"Cog server: resident memory {before >> 20} MB after {WARM} predictions, "
        f"{after >> 20} MB after {PREDICTIONS} ({growth / 2**20:+.1f} MB)"
    )
    assert growth < RSS_GROWTH_LIMIT
    outputs = [name for name in leftovers if name.startswith("sdxl-outputs-")]
    assert len(outputs) == 1  # one private root, holding only the last prediction's folder
    assert len(list((server.tmpdir / outputs[0]).iterdir())) == 1
    assert len(leftovers) <= 6, leftovers  # no file per prediction
    assert len(coglet_folders) <= KEEP_COGLET_FOLDERS + 1


def test_api_server_over_200_predictions(tiny_weights, tmp_path):
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_MAX_STORED_PREDICTIONS": "50"}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    server = Server(tiny_weights, tmp_path, env)
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    try:
        server.wait_ready()
        before = None
        for i in range(PREDICTIONS):
            if i == WARM:
                before = total_rss(server.proc.pid)
            if i % 2:
                response = requests.post(
                    server.base + GENERATE, json={**SMALL, "seed": i}, headers=auth, timeout=60
                )
                assert response.status_code == 200
                assert base64.b64decode(response.json()["images"][0])
            else:
                response = requests.post(
                    server.base + "/v1/predictions",
                    json={"version": GUIDE_VERSION, "input": {**SMALL, "seed": i}},
                    headers={**auth, "Prefer": "wait"},
                    timeout=60,
                )
                assert response.json()["status"] == "succeeded"
        after = total_rss(server.proc.pid)
        listed = requests.get(server.base + "/v1/predictions", headers=auth, timeout=10).json()
        stored = len(listed["results"])
        page = listed
        while page["next"]:
            page = requests.get(page["next"], headers=auth, timeout=10).json()
            stored += len(page["results"])
        leftovers = list((tmp_path / "tmp").iterdir())
    finally:
        server.stop()
    growth = after - before
    print(
        f"API server: resident memory {before >> 20} MB after {WARM} predictions, "
        f"{after >> 20} MB after {PREDICTIONS} ({growth / 2**20:+.1f} MB); "
        f"{stored} predictions stored"
    )
    assert growth < RSS_GROWTH_LIMIT
    assert stored <= 50  # SDXL_MAX_STORED_PREDICTIONS
    assert len(leftovers) <= 2, leftovers
