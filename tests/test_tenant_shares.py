"""Each tenant's share of the store and the queues: an upload over its tenant's share of the
stored bytes is a 413 and evicts nobody; expiry takes the tenant furthest over its share, its
oldest first, and never an upload a queued job needs; webhook URLs count; with several keys one
key may queue at most half of either queue by default; uploads stream under their own cap.

The store's order is read from a real SQLite (and PostgreSQL) store; what users see from real
servers over HTTP, expiry triggered in the test (a Store opened on the server's own database)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket

import pytest
import requests
from support.api_server import GUIDE_VERSION, Server, serving
from support.postgres import fresh_database

from sdxl.http.server_settings import Settings, half, store_limits, tenant_count
from sdxl.http.sync import queue_full
from sdxl.runtime.memory_jobs import MemoryJobs, NoRoom
from sdxl.store.limits import StoreLimits
from sdxl.store.shares import OverShare, bytes_of, stored_bytes
from sdxl.store.store import Store
from sdxl.store.tables import new_id

KIB, MIB = 1 << 10, 1 << 20
ALICE, BOB = "alice-key", "bob-key"
KEYS = f"alice:{ALICE},bob:{BOB}"
QUICK = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2}


# ---- the store ------------------------------------------------------------------------------


def opened(url: str, tmp_path, **limits) -> Store:
    return Store(url, tmp_path / "files", StoreLimits(**limits))


@pytest.fixture
def make(tmp_path):
    """A store on SQLite with the limits given."""
    made = []

    def make(**limits) -> Store:
        made.append(opened(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, **limits))
        return made[-1]

    yield make
    for store in made:
        store.close()


SHARES = {"max_bytes": 100 * KIB, "max_bytes_per_tenant": 50 * KIB}


def ended(store: Store, tenant: str, size: int, **row) -> str:
    """A succeeded prediction of `tenant` with one output of `size` bytes."""
    base = dict(id=new_id(), model="o/m", version="v", input={}, tenant=tenant)
    made = store.predictions.create({**base, **row})["id"]
    store.predictions.finish(made, "succeeded", images=[("out-0.png", "image/png", b"p" * size)])
    return made


def upload(store: Store, tenant: str, size: int, share: int | None = None) -> str:
    return store.files.add(
        "f.bin", "application/octet-stream", io.BytesIO(b"f" * size), {}, tenant, share
    )["id"]


def kept(store: Store, ids: list[str]) -> list[str]:
    found = [store.predictions.get(i) or store.files.get(i) for i in ids]
    return [i for i, row in zip(ids, found, strict=True) if row is not None]


def test_expiry_takes_the_tenant_over_its_share_oldest_first(make):
    """Shares of 50 KiB in 100 KiB: bob's outputs and uploads pass his, and the store's
    bound; his oldest go, predictions and uploads in their order, until the store is within
    its bound, and alice (within her share) keeps everything."""
    store = make(**SHARES)
    alices = [ended(store, "alice", 10 * KIB) for _ in range(4)]  # 40 KiB: within
    bobs = [ended(store, "bob", 10 * KIB), upload(store, "bob", 20 * KIB)]
    bobs += [ended(store, "bob", 10 * KIB) for _ in range(3)] + [upload(store, "bob", 10 * KIB)]
    with store.db.read() as conn:
        assert stored_bytes(conn) == 110 * KIB and bytes_of(conn, "bob") == 70 * KIB
    assert store.expire() == 1  # bob's oldest (10 KiB) brings the store to its bound
    assert kept(store, bobs) == bobs[1:]
    assert kept(store, alices) == alices

    more = [ended(store, "bob", 30 * KIB)]  # 130 KiB: bob's upload, then his next prediction
    assert store.expire() == 2
    assert kept(store, bobs + more) == bobs[3:] + more
    assert kept(store, alices) == alices
    assert store.expiry.stored_bytes() <= 100 * KIB


def test_a_tenant_within_its_share_loses_nothing_to_another(make):
    """Bob is over his share with nothing left that may go (his upload is named by his queued
    prediction): the store stays over its bound rather than take alice's."""
    store = make(**SHARES)
    alices = [ended(store, "alice", 45 * KIB)]
    needed = upload(store, "bob", 70 * KIB)
    url = f"https://elsewhere.example/v1/files/{needed}"
    waiting = store.predictions.create(
        dict(id=new_id(), model="o/m", version="v", input={"image": url}, tenant="bob")
    )
    assert store.expire() == 0
    everything = [*alices, needed, waiting["id"]]
    assert kept(store, everything) == everything
    store.predictions.finish(waiting["id"], "failed", error="stopped")  # no longer needs it
    assert store.expire() == 1 and kept(store, [needed]) == []
    assert kept(store, alices) == alices


def test_the_count_bound_takes_from_the_tenant_holding_the_most(make):
    """Over SDXL_MAX_STORED_PREDICTIONS, the tenant holding the most loses its oldest ended
    ones (a batch at once, so that the next creations find room), never another's; one that
    still waits stays."""
    store = make(max_predictions=5)
    alices = [ended(store, "alice", 1) for _ in range(2)]
    waiting = store.predictions.create(
        dict(id=new_id(), model="o/m", version="v", input={}, tenant="bob")
    )
    bobs = [ended(store, "bob", 1) for _ in range(3)] + [waiting["id"]]
    assert store.expire() == 3
    assert kept(store, alices + bobs) == [*alices, waiting["id"]]


def test_an_upload_over_its_tenants_share_is_refused_and_leaves_no_file(make):
    store = make()
    ended(store, "bob", 20 * KIB)
    upload(store, "bob", 10 * KIB, share=40 * KIB)
    with pytest.raises(OverShare) as over:
        upload(store, "bob", 11 * KIB, share=40 * KIB)
    assert over.value.held == 30 * KIB and over.value.share == 40 * KIB
    assert len(list((store.blobs.root / "files").iterdir())) == 1  # no partial copy
    assert not [p for p in store.blobs.root.rglob("*") if p.name.startswith(".partial-")]
    upload(store, "alice", 40 * KIB, share=40 * KIB)  # alice's share is her own


def test_webhook_urls_count_toward_their_tenants_bytes(make):
    store = make()
    hook = "https://hooks.example/" + "w" * 2000
    ended(store, "bob", 100, webhook=hook)
    with store.db.read() as conn:
        assert bytes_of(conn, "bob") == 100 + len(hook)
        assert bytes_of(conn, "alice") == 0
        assert stored_bytes(conn) == 100 + len(hook)


def test_expiry_order_on_postgresql(postgres_url, tmp_path):
    url = fresh_database(postgres_url, "sdxl_shares")
    store = opened(url, tmp_path, **SHARES)
    try:
        alices = [ended(store, "alice", 40 * KIB)]
        bobs = [
            upload(store, "bob", 30 * KIB),
            ended(store, "bob", 20 * KIB, webhook="https://h.example/x"),
        ]
        bobs.append(ended(store, "bob", 20 * KIB))
        assert store.expire() == 1
        assert kept(store, bobs) == bobs[1:] and kept(store, alices) == alices
        with store.db.read() as conn:
            assert bytes_of(conn, "bob") == 40 * KIB + len("https://h.example/x")
    finally:
        store.close()


# ---- the settings -----------------------------------------------------------------------------


class Entry:
    def __init__(self, key, name=None):
        self.key, self.name = key, name


def test_several_keys_share_the_queues_and_the_bytes_by_default():
    keys = [Entry("a1", "alice"), Entry("a2", "alice"), Entry("b"), Entry("c"), Entry("r", "admin")]
    assert tenant_count(keys) == 4 and tenant_count([]) == 0
    env = {
        "SDXL_MAX_STORED_BYTES": "3M",
        "SDXL_MAX_QUEUED_PREDICTIONS": "5",
        "SDXL_QUEUE_SIZE": "7",
    }
    several = Settings.from_env(env, tenants=2)
    assert several.store.max_queued_per_tenant == 3 == half(5)
    assert several.store.tenant_bytes == 3 * MIB // 2
    assert several.queue_size_per_key == 4
    one = Settings.from_env(env, tenants=1)
    assert one.store.max_queued_per_tenant is None and one.queue_size_per_key is None
    assert one.store.tenant_bytes == 3 * MIB
    given = {**env, "SDXL_MAX_STORED_BYTES_PER_KEY": "2M", "SDXL_MAX_QUEUED_PER_KEY": "5"}
    assert store_limits(given, 3).tenant_bytes == 2 * MIB
    assert store_limits(given, 3).max_queued_per_tenant == 5
    assert Settings.from_env({}).max_upload_bytes == 256 * MIB
    assert Settings.from_env({"SDXL_MAX_UPLOAD_BYTES": "1G"}).max_upload_bytes == 1 << 30


# ---- the synchronous APIs' queue ----------------------------------------------------------------


class HeldJob:
    def __init__(self, events):
        self.events = events

    def done(self) -> bool:
        return False


class BusyEngine:
    """An engine running something: every job submitted waits."""

    def __init__(self):
        self.jobs: list[HeldJob] = []

    def counts(self) -> dict:
        return {"running": 1}

    def submit(self, request, events, preview_every, tenant):
        self.jobs.append(HeldJob(events))
        return self.jobs[-1]


def test_one_key_holds_at_most_its_share_of_the_synchronous_queue():
    engine = BusyEngine()
    jobs = MemoryJobs(engine, capacity=4, per_caller=2)
    jobs.submit([object(), object()], "bob")
    with pytest.raises(NoRoom) as full:
        jobs.submit([object()], "bob")
    assert full.value.of_caller and (full.value.waiting, full.value.capacity) == (2, 2)
    jobs.submit([object(), object()], "alice")  # bob's backlog leaves her room
    with pytest.raises(NoRoom) as total:
        jobs.submit([object()], "carol")
    assert not total.value.of_caller and total.value.capacity == 4
    engine.jobs[0].events.started(engine.jobs[0])  # one of bob's starts: room for one more
    jobs.submit([object()], "bob")
    answer = queue_full(2, 2, 10.0, True)
    assert (
        answer.status == 429 and "SDXL_QUEUE_SIZE_PER_KEY" in str(answer) and " 2 " in str(answer)
    )


# ---- over HTTP --------------------------------------------------------------------------------


def call(server: Server, method: str, path: str, key: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return requests.request(method, server.base + path, headers=headers, timeout=120, **kwargs)


def post_file(server: Server, key: str, data, name="f.bin", **form) -> requests.Response:
    return call(server, "POST", "/v1/files", key, files={"content": (name, data), **form})


@pytest.mark.http
def test_bobs_uploads_stop_at_his_share_and_never_evict_alices_prediction(tiny_weights, tmp_path):
    """The issue's case: SDXL_MAX_STORED_BYTES=3M with two keys. Alice's prediction succeeds;
    bob's uploads stop at his share (1.5 MiB) with a 413 naming it; expiry runs; her
    prediction is still there, and so are bob's uploads within his share."""
    env = {
        "SDXL_API_KEYS": KEYS,
        "SDXL_MAX_STORED_BYTES": "3M",
        "SDXL_STATE_DIR": str(tmp_path / "s"),
    }
    server = Server(tiny_weights, tmp_path, env)
    try:
        server.wait_ready()
        body = {"version": GUIDE_VERSION, "input": QUICK}
        alices = call(
            server, "POST", "/v1/predictions", ALICE, json=body, headers={"Prefer": "wait"}
        )
        assert alices.status_code == 201 and alices.json()["status"] == "succeeded", alices.text
        first = post_file(server, BOB, os.urandom(MIB))
        assert first.status_code == 201, first.text
        over = post_file(server, BOB, os.urandom(MIB))
        assert over.status_code == 413, over.text
        assert "SDXL_MAX_STORED_BYTES_PER_KEY" in over.json()["detail"]
        assert str(3 * MIB // 2) in over.json()["detail"]
        assert not list((tmp_path / "s" / "files" / "files").glob(".partial-*"))

        path = f"/v1/predictions/{alices.json()['id']}"
        state = tmp_path / "s"
        assert expire_beside(state, store_limits(env, tenants=2)) == 0  # nobody over a share
        assert call(server, "GET", path, ALICE).status_code == 200
        assert call(server, "GET", f"/v1/files/{first.json()['id']}", BOB).status_code == 200
        assert call(server, "DELETE", f"/v1/files/{first.json()['id']}", BOB).status_code == 204
        again = post_file(server, BOB, os.urandom(MIB))  # room again
        assert again.status_code == 201, again.text

        # A store squeezed below what both hold, both within their shares: the one holding
        # the most (bob, his upload) gives way, never alice's prediction.
        squeezed = StoreLimits(
            max_bytes=stored_beside(state) - 1, max_bytes_per_tenant=3 * MIB // 2
        )
        assert expire_beside(state, squeezed) == 1
        assert call(server, "GET", f"/v1/files/{again.json()['id']}", BOB).status_code == 404
        assert call(server, "GET", path, ALICE).status_code == 200
    finally:
        server.stop()


def beside(state, limits: StoreLimits) -> Store:
    """A store opened on a server's own database and files (SQLite in its state folder)."""
    return Store(f"sqlite:///{state / 'predictions.db'}", state / "files", limits)


def expire_beside(state, limits: StoreLimits) -> int:
    store = beside(state, limits)
    try:
        return store.expire()
    finally:
        store.close()


def stored_beside(state) -> int:
    store = beside(state, StoreLimits())
    try:
        return store.expiry.stored_bytes()
    finally:
        store.close()


@pytest.mark.http
def test_one_key_may_queue_half_of_the_predictions_by_default(tiny_weights, tmp_path):
    """Two keys and a queue of 4, the model held loading (nothing runs): bob's third is a 429
    naming the per-key bound, alice's first is taken."""
    env = {"SDXL_API_KEYS": KEYS, "SDXL_MAX_QUEUED_PREDICTIONS": "4"}
    server = Server(tiny_weights, tmp_path, env, gate=tmp_path / "gate")
    try:
        server.wait_for(lambda h: h["status"] == "loading", "loading")
        body = {"version": GUIDE_VERSION, "input": QUICK}
        for _ in range(2):
            assert call(server, "POST", "/v1/predictions", BOB, json=body).status_code == 201
        third = call(server, "POST", "/v1/predictions", BOB, json=body)
        assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
        detail = third.json()["detail"]
        assert "SDXL_MAX_QUEUED_PER_KEY" in detail and "(2," in detail
        assert call(server, "POST", "/v1/predictions", ALICE, json=body).status_code == 201
    finally:
        server.stop()


@pytest.fixture
def uploads(tiny_weights, tmp_path):
    """Two keys, uploads up to 40 MiB."""
    env = {"SDXL_API_KEYS": KEYS, "SDXL_MAX_UPLOAD_BYTES": "40M"}
    with serving(tiny_weights, tmp_path, {**env, "SDXL_STATE_DIR": str(tmp_path / "s")}) as srv:
        yield srv


@pytest.mark.http
def test_uploads_stream_under_their_own_cap(uploads, tmp_path):
    """30 MiB (over the JSON bodies' 20 MiB) is kept whole; a body declared or streamed past
    SDXL_MAX_UPLOAD_BYTES is a 413 naming it; deeply nested metadata is a 422."""
    server = uploads
    data = os.urandom(30 * MIB)
    taken = post_file(server, BOB, data, metadata=(None, '{"album": "holiday"}'))
    assert taken.status_code == 201, taken.text
    digest = hashlib.sha256(data).hexdigest()
    assert taken.json()["checksums"]["sha256"] == digest and taken.json()["size"] == len(data)
    assert taken.json()["metadata"] == {"album": "holiday"}
    stored = tmp_path / "s" / "files" / "files" / taken.json()["id"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    del data

    declared = declared_only(server, 41 * MIB)
    assert declared.startswith(b"HTTP/1.1 413"), declared
    assert b"41943040 bytes (SDXL_MAX_UPLOAD_BYTES)" in declared

    def past_the_cap():  # no Content-Length: counted as it comes
        yield b'--b\r\nContent-Disposition: form-data; name="content"; filename="x"\r\n\r\n'
        for _ in range(40):
            yield bytes(MIB)
        yield bytes(16 * KIB)

    streamed = call(
        server,
        "POST",
        "/v1/files",
        BOB,
        data=past_the_cap(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert streamed.status_code == 413 and "SDXL_MAX_UPLOAD_BYTES" in streamed.json()["detail"]

    nested = "[" * 100_000 + "]" * 100_000
    for metadata in (
        nested,
        json.dumps({"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
    ):
        deep = post_file(server, BOB, b"x", metadata=(None, metadata))
        assert deep.status_code == 422 and "metadata" in deep.json()["detail"], deep.text
    assert post_file(server, BOB, b"x").status_code == 201  # the server serves on


def declared_only(server: Server, length: int) -> bytes:
    """The answer to headers declaring a `length`-byte upload, sent without the body (as a
    client waiting for 100 Continue)."""
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {BOB}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n"
        f"Connection: close\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head.encode())
        answer = b""
        while piece := conn.recv(65536):  # until the server closes
            answer += piece
    continued = b"HTTP/1.1 100 Continue\r\n\r\n"
    return answer.removeprefix(continued)
