"""Many replicas, one queue: two `python -m sdxl api` processes on loopback sharing a real
PostgreSQL (tests/support/postgres.py) and one files folder. A burst spreads over both; either
replica reads, lists and cancels any prediction; a replica killed mid-job leaves its job failed,
never lost or run twice. The pair looks at the database without a wake-up only every ten minutes
(SDXL_STORE_POLL_S): an idle replica takes a prediction the other created, and a cancel reaches
the replica running it, only through the database's notifications (LISTEN/NOTIFY). The tiny
model; which replica ran a prediction is read from each process's own log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.api_server import KEYS, Server
from support.helpers import wait_until
from support.postgres import fresh_database

pytestmark = pytest.mark.http

TIMEOUT_S = 2  # SDXL_REPLICA_TIMEOUT: a replica silent this long is dead
QUICK = {"prompt": "a harbour", "width": 256, "height": 256, "num_inference_steps": 12}
# Long enough on any machine that it is still running when the test cancels or kills it: 500
# steps of a batch of four (the tests stop it long before its end).
LONG = {**QUICK, "num_inference_steps": 500, "num_outputs": 4}


def start_pair(tiny_weights, folder: Path, database_url: str) -> tuple[Server, Server]:
    env = {
        "SDXL_API_KEYS": KEYS[0],
        "SDXL_DATABASE_URL": database_url,
        "SDXL_FILES_DIR": str(folder / "files"),  # the volume every replica mounts
        "SDXL_REPLICA_TIMEOUT": str(TIMEOUT_S),
        "SDXL_STORE_POLL_S": "600",  # only notifications wake them within a test
    }
    pair = (Server(tiny_weights, folder, env), Server(tiny_weights, folder, env))
    for server in pair:
        server.wait_ready()
    return pair


@pytest.fixture(scope="module")
def pair(tiny_weights, postgres_url, tmp_path_factory):
    database = fresh_database(postgres_url, "sdxl_pair")
    servers = start_pair(tiny_weights, tmp_path_factory.mktemp("pair"), database)
    yield servers
    for server in servers:
        server.stop()


def runs(server: Server, prediction_id: str, what: str = "done") -> int:
    """How many times `server`'s log says the prediction's job `what` (started, done, ...)."""
    return len(re.findall(rf"job {prediction_id} {what}\b", server.log()))


def runner_of(database_url: str, prediction_id: str, servers) -> Server:
    """The replica whose claim the prediction is under (replica names hold the pid)."""
    db = sa.create_engine(database_url)
    try:
        with db.connect() as conn:
            holder = conn.scalar(
                sa.text("SELECT claimed_by FROM predictions WHERE id = :id"), {"id": prediction_id}
            )
    finally:
        db.dispose()
    (found,) = [s for s in servers if holder and f"-{s.proc.pid}-" in holder]
    return found


def test_a_burst_spreads_over_both_replicas(pair):
    first, second = pair
    created = [first.create_prediction({**QUICK, "seed": seed}) for seed in range(6)]
    ended = [second.wait_prediction(p["id"]) for p in created]
    assert [p["status"] for p in ended] == ["succeeded"] * 6
    for prediction in created:  # each ran exactly once, on one replica or the other
        assert runs(first, prediction["id"]) + runs(second, prediction["id"]) == 1
    assert any(runs(first, p["id"]) for p in created), first.log()
    assert any(runs(second, p["id"]) for p in created), second.log()
    # Same seed, same pixels, whichever replica ran it and whichever answers.
    again = second.create_prediction({**QUICK, "seed": 0})
    assert second.wait_prediction(again["id"])["status"] == "succeeded"
    image = first.prediction(again["id"])["output"][0]  # data: URIs (no SDXL_PUBLIC_URL)
    assert image.startswith("data:image/")
    assert image == second.prediction(created[0]["id"])["output"][0]


def test_any_replica_reads_lists_and_cancels_any_prediction(pair):
    first, second = pair
    on_first = first.create_prediction(LONG)
    running = second.wait_prediction(on_first["id"], until=("processing",))
    assert running["input"] == on_first["input"] and running["id"] == on_first["id"]
    listed = second.api("GET", "/v1/predictions").json()["results"]
    assert on_first["id"] in [p["id"] for p in listed]
    on_second = second.create_prediction(LONG)  # the other GPU is free: it runs there
    first.wait_prediction(on_second["id"], until=("processing",))
    for prediction, elsewhere in ((on_first, second), (on_second, first)):
        answer = elsewhere.api("POST", f"/v1/predictions/{prediction['id']}/cancel")
        assert answer.status_code == 200, answer.text
    for prediction in (on_first, on_second):
        ended = first.wait_prediction(prediction["id"], timeout=60)
        assert ended["status"] == "canceled"
        assert "base step 500/500" not in ended["logs"]  # it stopped at a step, not at its end
    for prediction in (on_first, on_second):
        cancels = [runs(server, prediction["id"], "canceled") for server in pair]
        assert sorted(cancels) == [0, 1]  # cancelled where it ran, and only there


def test_a_killed_replica_fails_its_job_and_the_others_run_once(
    tiny_weights, postgres_url, tmp_path
):
    database = fresh_database(postgres_url, "sdxl_kill")
    env = {
        "SDXL_API_KEYS": KEYS[0],
        "SDXL_DATABASE_URL": database,
        "SDXL_FILES_DIR": str(tmp_path / "files"),
        "SDXL_REPLICA_TIMEOUT": str(TIMEOUT_S),
    }
    # Each step waits for the event it needs, so that which replica holds what is decided by
    # the order of events, never by a race between the replicas' claims.
    victim = Server(tiny_weights, tmp_path, env)
    servers = [victim]
    try:
        victim.wait_ready()  # alone: it takes the doomed job and claims one more
        doomed = victim.create_prediction(LONG)
        victim.wait_prediction(doomed["id"], until=("processing",))
        claimed = victim.create_prediction({**QUICK, "seed": 1})
        wait_until(lambda: runner_of_or_none(database, claimed["id"], servers), "claimed")
        survivor = Server(tiny_weights, tmp_path, env)  # the victim is full: the rest is its
        servers.append(survivor)
        survivor.wait_ready()
        busy = survivor.create_prediction(LONG)
        survivor.wait_prediction(busy["id"], until=("processing",))
        waiting = survivor.create_prediction({**QUICK, "seed": 2})
        wait_until(lambda: runner_of_or_none(database, waiting["id"], servers), "claimed")
        assert runner_of(database, claimed["id"], servers) is victim
        assert runner_of(database, waiting["id"], servers) is survivor
        assert victim.prediction(doomed["id"])["status"] == "processing"
        victim.proc.kill()  # SIGKILL: no drain, no goodbye
        victim.proc.wait(30)
        lost = survivor.wait_prediction(doomed["id"], timeout=60)
        assert lost["status"] == "failed"
        assert "replica running this prediction stopped answering" in lost["error"]
        survivor.api("POST", f"/v1/predictions/{busy['id']}/cancel")
        for prediction in (claimed, waiting):  # the victim's claim went back to the queue
            assert survivor.wait_prediction(prediction["id"])["status"] == "succeeded"
            assert runs(survivor, prediction["id"]) == 1
            assert runs(victim, prediction["id"], "started") == 0
        assert runs(survivor, doomed["id"], "started") == 0  # failed, not run again
    finally:
        for server in servers:
            server.stop()


def runner_of_or_none(database_url: str, prediction_id: str, servers) -> Server | None:
    try:
        return runner_of(database_url, prediction_id, servers)
    except ValueError:
        return None
