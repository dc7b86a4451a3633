"""No handler blocks the event loop on the store: while every database call of a real server
hangs (a gate held in front of them, as a slow or locked database would), /health and /ready
answer, and a DataCrunch request is accepted and counted as queued; once the database answers
again, the request is served. Ordered by the gate, never by time."""

from __future__ import annotations

import threading

import pytest
import requests
from support.api_server import KEYS, Server

pytestmark = pytest.mark.http

# Every transaction and read of the store waits while the file `hold` exists.
HOLD = """
import contextlib, os, time
import sdxl.store.db as _db
def _held(real):
    @contextlib.contextmanager
    def held(self, *args, **kwargs):
        while os.path.exists({hold!r}):
            time.sleep(0.02)
        with real(self, *args, **kwargs) as conn:
            yield conn
    return held
_db.Database.read, _db.Database.tx = _held(_db.Database.read), _held(_db.Database.tx)
"""


def test_probes_and_requests_answer_while_the_database_hangs(tiny_weights, tmp_path):
    hold = tmp_path / "hold"
    preamble = HOLD.format(hold=str(hold))
    server = Server(tiny_weights, tmp_path, {"SDXL_API_KEYS": KEYS[0]}, preamble=preamble)
    answers: list[requests.Response] = []
    try:
        server.wait_ready()
        hold.touch()  # from now on every database call hangs
        body = {"prompt": "a cat", "width": 256, "height": 256, "num_inference_steps": 3}
        asking = threading.Thread(target=lambda: answers.append(server.post(body)))
        asking.start()
        seen = None
        for _ in range(600):  # until the engine has the request: queued, running or answered
            health = requests.get(server.base + "/health", timeout=30)
            assert health.status_code == 200
            report = health.json()
            if report["queued"] + report["running"] >= 1 or answers:
                seen = report
                break
            threading.Event().wait(0.05)
        assert seen is not None, "the request never reached the engine"
        assert requests.get(server.base + "/ready", timeout=30).status_code == 200
        assert hold.exists()  # all of it answered while the database still hangs
        hold.unlink()
        asking.join(120)
        assert answers and answers[0].status_code == 200, answers
    finally:
        hold.unlink(missing_ok=True)
        server.stop()
