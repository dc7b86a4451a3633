"""Tenants on one server: each API key sees only its own predictions and files (another's answer
404, as an id that does not exist), its webhooks are signed with its own secret, the admin key
sees everything, a key is rotated by giving its name a new key, and the GPU takes the tenants in
turn. Real servers on loopback, on SQLite and on a real PostgreSQL pair; the order of starts is
read from the predictions' own `started_at` and the servers' logs, never from wall-clock times."""

from __future__ import annotations

import re
import threading

import pytest
import replicate
import requests
import sqlalchemy as sa
from support.api_server import GENERATE, GUIDE_VERSION, Server
from support.cog_server import Receiver
from support.postgres import fresh_database

pytestmark = pytest.mark.http

ALICE, ALICE_NEW, BOB, CAROL, ROOT = "alice-key-1", "alice-key-2", "bob-key", "carol-key", "root"
KEYS = f"alice:{ALICE},bob:{BOB},{CAROL}"  # carol's key is unnamed: a digest names it
QUICK = {"prompt": "secret plans of A", "width": 256, "height": 256, "num_inference_steps": 3}
LONG = {**QUICK, "num_inference_steps": 400}


def call(server: Server, method: str, path: str, key: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return requests.request(method, server.base + path, headers=headers, timeout=60, **kwargs)


def create(server: Server, key: str, inputs: dict, **extra) -> dict:
    body = {"version": GUIDE_VERSION, "input": inputs, **extra}
    response = call(server, "POST", "/v1/predictions", key, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait(server: Server, key: str, prediction_id: str, until=("succeeded", "failed", "canceled")):
    for _ in range(1800):
        found = call(server, "GET", f"/v1/predictions/{prediction_id}", key).json()
        if found["status"] in until:
            return found
        threading.Event().wait(0.1)
    pytest.fail(f"{prediction_id} never reached {until}")


def like_a_missing_id(response: requests.Response, server: Server, key: str, path: str) -> None:
    """`response` is exactly what an id that does not exist gets, but for the id itself."""
    missing = call(server, "GET" if "cancel" not in path else "POST", path, key)
    assert response.status_code == missing.status_code == 404
    assert set(response.json()) == set(missing.json())
    assert response.json()["title"] == missing.json()["title"]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tenants")
    env = {"SDXL_API_KEYS": KEYS, "SDXL_ADMIN_KEY": ROOT, "SDXL_STATE_DIR": str(tmp_path / "s")}
    srv = Server(tiny_weights, tmp_path, env)
    srv.wait_ready()
    yield srv
    srv.stop()


def test_a_key_sees_only_its_own_predictions_and_files(server):
    receiver = Receiver()
    try:
        file = call(
            server, "POST", "/v1/files", ALICE, files={"content": ("a.txt", b"plans", "text/plain")}
        ).json()
        hooked = create(server, ALICE, QUICK, webhook=receiver.url + "/alice")
        done = wait(server, ALICE, hooked["id"])
        running = create(server, ALICE, LONG)
        wait(server, ALICE, running["id"], until=("processing",))

        for path in (f"/v1/predictions/{done['id']}", f"/v1/predictions/{running['id']}/preview"):
            like_a_missing_id(call(server, "GET", path, BOB), server, BOB, "/v1/predictions/nope")
        cancel = call(server, "POST", f"/v1/predictions/{running['id']}/cancel", BOB)
        like_a_missing_id(cancel, server, BOB, "/v1/predictions/nope/cancel")
        listed = call(server, "GET", "/v1/predictions", BOB).json()["results"]
        assert listed == [] and "secret plans" not in str(listed)
        like_a_missing_id(
            call(server, "GET", f"/v1/files/{file['id']}", BOB), server, BOB, "/v1/files/nope"
        )
        borrowed = create(server, BOB, {**QUICK, "image": file["urls"]["get"]})
        failed = wait(server, BOB, borrowed["id"])  # another's upload is no file of Bob's
        assert failed["status"] == "failed" and "is not on this server" in failed["error"]

        # Alice sees hers; the unnamed key sees none; the admin key sees and cancels any.
        mine = {p["id"] for p in call(server, "GET", "/v1/predictions", ALICE).json()["results"]}
        assert {done["id"], running["id"]} <= mine and borrowed["id"] not in mine
        assert call(server, "GET", "/v1/predictions", CAROL).json()["results"] == []
        every = {p["id"] for p in call(server, "GET", "/v1/predictions", ROOT).json()["results"]}
        assert {done["id"], running["id"], borrowed["id"]} <= every
        assert call(server, "GET", f"/v1/files/{file['id']}", ROOT).status_code == 200
        stopped = call(server, "POST", f"/v1/predictions/{running['id']}/cancel", ROOT)
        assert stopped.status_code == 200
        assert wait(server, ALICE, running["id"])["status"] == "canceled"

        # Webhooks go to the URL their creator gave, signed with the creator's own secret.
        receiver.wait_for(lambda reqs: any(b'"succeeded"' in body for *_, body in reqs))
        assert {path for _, path, _, _ in receiver.requests} == {"/alice"}
        secrets = {
            key: replicate.webhook.WebhookSigningSecret(
                key=call(server, "GET", "/v1/webhooks/default/secret", key).json()["key"]
            )
            for key in (ALICE, BOB, CAROL)
        }
        assert len({secret.key for secret in secrets.values()}) == 3
        validate = replicate.webhook.Webhooks.validate
        for _, _, headers, body in receiver.requests:
            headers = {k.lower(): v for k, v in headers.items()}
            validate(headers=headers, body=body.decode(), secret=secrets[ALICE])
            with pytest.raises(replicate.webhook.InvalidSignatureError):
                validate(headers=headers, body=body.decode(), secret=secrets[BOB])
    finally:
        receiver.close()


def test_progress_and_interrupt_concern_only_the_callers_jobs(server):
    answers = []
    long = {"prompt": "a cat", "width": 256, "height": 256, "steps": 400, "seed": 1}
    auth = {"Authorization": f"Bearer {ALICE}"}
    thread = threading.Thread(
        target=lambda: answers.append(
            requests.post(server.base + "/sdapi/v1/txt2img", json=long, headers=auth, timeout=300)
        )
    )
    thread.start()
    for _ in range(3000):
        if call(server, "GET", "/sdapi/v1/progress", ALICE).json()["state"]["job_count"]:
            break
        threading.Event().wait(0.05)
    assert call(server, "GET", "/sdapi/v1/progress", BOB).json()["state"]["job_count"] == 0
    assert call(server, "POST", "/sdapi/v1/interrupt", BOB).json() == {}
    assert call(server, "GET", "/sdapi/v1/progress", ALICE).json()["state"]["job_count"] == 1
    call(server, "POST", "/sdapi/v1/interrupt", ALICE)
    thread.join(120)
    # 200: nothing made if it had not begun, else the image of the latents it had
    assert answers[0].status_code == 200 and len(answers[0].json()["images"]) <= 1
    assert "interrupted (POST /sdapi/v1/interrupt)" in server.log()


@pytest.mark.slow  # two server starts (12 s) for the operator's rotation procedure
def test_a_rotated_key_keeps_its_tenants_predictions(tiny_weights, tmp_path):
    state = {"SDXL_STATE_DIR": str(tmp_path / "state"), "SDXL_ADMIN_KEY": ROOT}
    first = Server(tiny_weights, tmp_path, {**state, "SDXL_API_KEYS": KEYS})
    try:
        first.wait_ready()
        alices = create(first, ALICE, QUICK)["id"]
        carols = create(first, CAROL, QUICK)["id"]
        wait(first, ALICE, alices)
        wait(first, CAROL, carols)
    finally:
        first.stop()
    # During the rotation both of alice's keys are given; then only the new one.
    rotated = f"alice:{ALICE_NEW},bob:{BOB},{CAROL}"
    again = Server(tiny_weights, tmp_path, {**state, "SDXL_API_KEYS": rotated})
    try:
        again.wait_ready()
        assert call(again, "GET", f"/v1/predictions/{alices}", ALICE).status_code == 401
        assert wait(again, ALICE_NEW, alices)["status"] == "succeeded"
        assert wait(again, CAROL, carols)["status"] == "succeeded"  # the digest is kept
        assert call(again, "GET", f"/v1/predictions/{alices}", BOB).status_code == 404
    finally:
        again.stop()


def starts(server: Server, key: str, ids: list[str]) -> list[str]:
    """`ids` in the order they started, by their own started_at."""
    found = [wait(server, key, i) for i in ids]
    assert all(p["status"] == "succeeded" for p in found), found
    return [p["id"] for p in sorted(found, key=lambda p: p["started_at"])]


def claims(database: str, ids: list[str]) -> list[str]:
    """`ids` in the order the replicas claimed them, read from the database itself: two replicas
    start what they claimed each on its own clock, so started_at may interleave; claims may not."""
    engine = sa.create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id FROM predictions WHERE id = ANY(:ids) ORDER BY claimed_at"),
                {"ids": ids},
            )
            return [row.id for row in rows]
    finally:
        engine.dispose()


def test_the_gpu_takes_the_tenants_in_turn(tiny_weights, tmp_path):
    """While the model loads, alice queues six predictions, then bob two, then carol one: they
    start alice, bob, carol, alice, bob, then the rest of alice's, in her order."""
    env = {"SDXL_API_KEYS": KEYS, "SDXL_ADMIN_KEY": ROOT, "SDXL_MAX_QUEUED_PER_KEY": "6"}
    server = Server(tiny_weights, tmp_path, env, gate=tmp_path / "gate")
    try:
        server.wait_for(lambda h: h["status"] == "loading", "loading")
        alice = [create(server, ALICE, {**QUICK, "seed": i})["id"] for i in range(6)]
        body = {"version": GUIDE_VERSION, "input": QUICK}
        over = call(server, "POST", "/v1/predictions", ALICE, json=body)
        assert over.status_code == 429 and "SDXL_MAX_QUEUED_PER_KEY" in over.text
        assert int(over.headers["Retry-After"]) > 0
        bob = [create(server, BOB, {**QUICK, "seed": i})["id"] for i in range(2)]
        carol = [create(server, CAROL, QUICK)["id"]]
        server.gate.touch()
        order = starts(server, ROOT, alice + bob + carol)
        expected = [alice[0], bob[0], carol[0], alice[1], bob[1], *alice[2:]]
        assert order == expected
    finally:
        server.stop()


@pytest.mark.parametrize(
    "bob_asks", [pytest.param("datacrunch", marks=pytest.mark.slow), "prediction"]
)
def test_another_tenant_starts_after_at_most_two_of_a_backlog(tiny_weights, tmp_path, bob_asks):
    """Alice's backlog of six stored predictions is running; Bob's one (a DataCrunch request in
    memory, or a stored prediction) starts after the one running and the one claimed ahead of
    it: never behind her backlog."""
    server = Server(tiny_weights, tmp_path, {"SDXL_API_KEYS": KEYS})
    try:
        server.wait_ready()
        running = {**QUICK, "num_inference_steps": 30}  # holds the GPU while bob asks
        backlog = [
            create(server, ALICE, {**(QUICK if i else running), "seed": i})["id"] for i in range(6)
        ]
        server.wait_for(lambda h: h["running"] == 1, "running alice's first")
        if bob_asks == "datacrunch":
            answer = requests.post(
                server.base + GENERATE,
                json={"prompt": "bob's", "height": 256, "width": 256, "num_inference_steps": 3},
                headers={"Authorization": f"Bearer {BOB}"},
                timeout=300,
            )
            assert answer.status_code == 200, answer.text
        else:
            bobs_id = create(server, BOB, QUICK)["id"]
            assert wait(server, BOB, bobs_id)["status"] == "succeeded"
        assert starts(server, ALICE, backlog) == backlog  # hers in her order
        started = re.findall(r"job (\w+) started", server.log())
        bobs = next(i for i, job in enumerate(started) if job not in backlog)
        assert bobs <= 2, started  # alice's running one and the one claimed before bob's
    finally:
        server.stop()


def test_tenants_across_a_postgresql_pair(tiny_weights, postgres_url, tmp_path):
    database = fresh_database(postgres_url, "sdxl_tenants")
    env = {"SDXL_API_KEYS": KEYS, "SDXL_ADMIN_KEY": ROOT, "SDXL_DATABASE_URL": database}
    env["SDXL_FILES_DIR"] = str(tmp_path / "files")
    gates = [tmp_path / "gate-1", tmp_path / "gate-2"]
    pair = [Server(tiny_weights, tmp_path, env, gate=gate) for gate in gates]
    try:
        for server in pair:
            server.wait_for(lambda h: h["status"] == "loading", "loading")
        first, second = pair
        alice = [create(first, ALICE, {**QUICK, "seed": i})["id"] for i in range(5)]
        bob = [create(second, BOB, QUICK)["id"]]
        for gate in gates:
            gate.touch()
        starts(first, ROOT, alice + bob)
        order = claims(database, alice + bob)
        # Either replica: another tenant's prediction is not there; the creator's is.
        for server in pair:
            like_a_missing_id(
                call(server, "GET", f"/v1/predictions/{alice[0]}", BOB),
                server,
                BOB,
                "/v1/predictions/nope",
            )
            assert call(server, "GET", f"/v1/predictions/{bob[0]}", BOB).status_code == 200
        assert order.index(bob[0]) <= 2, order  # among the first turns of both replicas
        assert [i for i in order if i in alice] == alice, order
    finally:
        for server in pair:
            server.stop()
