"""Faults of what the server stands on: its prediction store's database stopped under a running
pair of replicas (a real PostgreSQL of its own, stopped as a crash would and started again), and
an SQLite store whose disk fills up (SQLite itself refusing to grow the file: the same
"database or disk is full" a full disk gives; CI runs as root, so file modes would not stop
it). Every check is ordered by events, never by time."""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from support.api_server import GUIDE_VERSION, KEYS, Server
from support.helpers import wait_until
from support.postgres import Cluster, fresh_database

pytestmark = pytest.mark.http

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
QUICK = {"prompt": "a harbour", "width": 256, "height": 256, "num_inference_steps": 3}
# Long enough that both replicas are still running one when the database stops.
LONG = {**QUICK, "num_inference_steps": 120}


def done_count(servers, prediction_id: str) -> int:
    return sum(len(re.findall(rf"job {prediction_id} done\b", s.log())) for s in servers)


def store_unavailable(response: requests.Response) -> bool:
    return (
        response.status_code == 503
        and int(response.headers["Retry-After"]) > 0
        and "prediction store" in response.text
    )


@pytest.fixture
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="sdxl-outage-"))  # its own: this test stops it
    server = Cluster(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


# Slow: a PostgreSQL pair stopped and started (about 35 s); test_event_loop holds the database
# of a real server and the full disk below fails the store under one, on the default run.
@pytest.mark.slow
def test_a_postgresql_outage_is_a_503_where_the_store_is_needed_and_loses_nothing(
    tiny_weights, cluster, tmp_path
):
    database = fresh_database(cluster.url, "sdxl_outage")
    env = {"SDXL_API_KEYS": KEYS[0], "SDXL_DATABASE_URL": database, "SDXL_REPLICA_TIMEOUT": "2"}
    env["SDXL_FILES_DIR"] = str(tmp_path / "files")
    pair = [Server(tiny_weights, tmp_path, env), Server(tiny_weights, tmp_path, env)]
    try:
        for server in pair:
            server.wait_ready()
        first, second = pair
        ids = [first.create_prediction({**LONG, "seed": i})["id"] for i in range(4)]
        for server in pair:
            server.wait_for(lambda h: h["running"] == 1, "running a prediction")

        cluster.stop()
        assert store_unavailable(first.api("GET", f"/v1/predictions/{ids[0]}"))
        created = second.api("POST", "/v1/predictions", {"version": GUIDE_VERSION, "input": QUICK})
        assert store_unavailable(created)
        assert store_unavailable(first.api("GET", "/v1/predictions"))
        for server in pair:  # the probes stay about the model: every replica stays in service
            assert requests.get(server.base + "/ready", timeout=10).status_code == 200
            assert requests.get(server.base + "/health", timeout=10).status_code == 200
        metrics = requests.get(first.base + "/metrics", timeout=10)
        assert "sdxl_prediction_store_up 0.0" in metrics.text
        assert not re.search(r"^sdxl_shared_queue_depth", metrics.text, re.M)  # absent, not stale
        url = requests.post(
            first.base + "/v1/images/generations",
            json={**OPENAI, "response_format": "url"},
            headers=AUTH,
            timeout=60,
        )
        assert url.status_code == 503 and url.json()["error"]["type"] == "server_error"
        # What needs no store keeps working (behind the running job, which ends meanwhile).
        generated = first.post({**QUICK, "seed": 1})
        assert generated.status_code == 200, generated.text
        assert base64.b64decode(generated.json()["images"][0])[:4] == b"\x89PNG"
        b64 = requests.post(
            second.base + "/v1/images/generations", json=OPENAI, headers=AUTH, timeout=300
        )
        assert b64.status_code == 200 and b64.json()["data"][0]["b64_json"]
        # Both running predictions ended during the outage: their results wait in memory.
        wait_until(lambda: sum(done_count(pair, i) for i in ids) >= 2, "two predictions done")

        cluster.start()
        for prediction_id in ids:
            found = first.wait_prediction(prediction_id, timeout=300)
            assert found["status"] == "succeeded", found
            assert done_count(pair, prediction_id) == 1, prediction_id  # none ran twice
        for server in pair:  # both replicas lived through it
            assert server.proc.poll() is None
        metrics = requests.get(first.base + "/metrics", timeout=10)
        assert "sdxl_prediction_store_up 1.0" in metrics.text
        assert "sdxl_shared_queue_depth 0.0" in metrics.text
        assert first.wait_prediction(first.create_prediction(QUICK)["id"])["status"] == "succeeded"
    finally:
        for server in pair:
            server.stop()


OPENAI = {"prompt": "a cat", "size": "256x256", "num_inference_steps": 3, "seed": 2}

# A full disk, injected in the server process: while FLAG exists, SQLite may not grow the
# database file by a page (PRAGMA max_page_count: SQLITE_FULL, "database or disk is full",
# exactly what a full disk gives), and a file written to the files folder gets ENOSPC, as the
# OS answers on a full disk; once it is gone, both may grow again.
FULL_DISK = """
import errno, os, builtins, sqlalchemy as _sa
_open = builtins.open
def _opened(file, mode="r", *args, **kwargs):
    if os.path.exists({flag!r}) and "w" in mode and "/files/" in str(file):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return _open(file, mode, *args, **kwargs)
builtins.open = _opened
_state = {{}}
def _full_disk(conn, cursor, statement, parameters, context, executemany):
    raw = conn.connection.dbapi_connection
    full = os.path.exists({flag!r})
    if _state.get(id(raw)) != full:
        _state[id(raw)] = full
        pages = raw.execute("PRAGMA page_count").fetchone()[0] if full else 1073741823
        raw.execute(f"PRAGMA max_page_count = {{pages}}")
_sa.event.listen(_sa.engine.Engine, "before_cursor_execute", _full_disk)
"""


def test_a_full_disk_fails_the_prediction_saying_so_and_the_server_recovers(tiny_weights, tmp_path):
    flag = tmp_path / "disk-full"
    env = {"SDXL_API_KEYS": KEYS[0]}
    server = Server(tiny_weights, tmp_path, env, preamble=FULL_DISK.format(flag=str(flag)))
    try:
        server.wait_ready()
        running = server.create_prediction({**LONG, "num_inference_steps": 40})["id"]
        server.wait_prediction(running, until=("processing",))
        flag.touch()
        ended = server.wait_prediction(running)
        assert ended["status"] == "failed", ended
        assert ended["error"].startswith("the server's disk is full"), ended["error"]
        assert "sqlalchemy" not in ended["error"].lower() and "sqlite" not in ended["error"]
        larger_than_a_page = {**QUICK, "prompt": "a harbour " * 900}
        big = server.api(
            "POST", "/v1/predictions", {"version": GUIDE_VERSION, "input": larger_than_a_page}
        )
        assert big.status_code == 503 and "the server's disk is full" in big.text, big.text
        assert int(big.headers["Retry-After"]) > 0
        assert server.post(QUICK).status_code == 200  # DataCrunch needs no store
        flag.unlink()
        again = server.create_prediction(QUICK)["id"]
        assert server.wait_prediction(again)["status"] == "succeeded"
    finally:
        server.stop()
