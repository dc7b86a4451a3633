"""A training that stops early keeps its last checkpoint for its owner, on real SQLite and
PostgreSQL stores without a model: a cancelled or failed one keeps it, a succeeded one's goes,
a queued one that was handed back keeps its own when cancelled; each tenant keeps only its
newest few (as many as it may run trainings at once), another tenant's untouched; and which
URLs name a checkpoint of this server's. Over HTTP with the tiny model: test_trainings_api.py."""

from __future__ import annotations

import pytest
from support.postgres import fresh_database

from sdxl.runtime.stored_trainings import own_checkpoint_id
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import new_id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    if request.param == "postgresql":
        url = fresh_database(request.getfixturevalue("postgres_url"), "sdxl_checkpoints")
    limits = StoreLimits(max_trainings_per_tenant=2)
    opened = Store(url, tmp_path / "files", limits)
    for tenant in ("alice", "bob"):
        opened.destinations.create(
            dict(owner=tenant, name="m", tenant=tenant, visibility="private", hardware="gpu")
        )
    yield opened
    opened.close()


def checkpointed(store: Store, tmp_path, tenant: str = "alice", step: int = 3) -> str:
    """A training of `tenant`'s, running on replica "r", with a checkpoint at `step`."""
    training_id = new_id()
    row = dict(id=training_id, model="stability-ai/sdxl", version="v", destination=f"{tenant}/m")
    store.trainings.create({**row, "input": {}, "tenant": tenant})
    assert store.trainings.claim("r", tenant)["id"] == training_id
    assert store.trainings.started(training_id, "r")
    state = tmp_path / f"{training_id}.tar"
    state.write_bytes(f"the state of {training_id} at step {step}".encode())
    assert store.trainings.keep_checkpoint(training_id, "r", step, state)
    return training_id


def kept(store: Store, training_id: str) -> bytes | None:
    key = store.trainings.get(training_id)["checkpoint_key"]
    return None if key is None else store.blobs.read(key)


@pytest.mark.parametrize("status", ["canceled", "failed"])
def test_a_training_stopped_early_keeps_its_checkpoint(store, tmp_path, status):
    training_id = checkpointed(store, tmp_path)
    ended = store.trainings.finish(training_id, status, replica="r", error=None, logs="...")
    assert ended["status"] == status and ended["checkpoint_step"] == 3
    assert kept(store, training_id) == f"the state of {training_id} at step 3".encode()


def test_a_succeeded_training_keeps_its_weights_not_its_checkpoint(store, tmp_path):
    training_id = checkpointed(store, tmp_path)
    key = store.trainings.get(training_id)["checkpoint_key"]
    tar = tmp_path / "trained_model.tar"
    tar.write_bytes(b"weights")
    store.trainings.finish(training_id, "succeeded", replica="r", weights=tar)
    assert store.trainings.get(training_id)["checkpoint_key"] is None
    assert not store.blobs.exists(key)


def test_a_queued_training_handed_back_keeps_its_checkpoint_when_cancelled(store, tmp_path):
    training_id = checkpointed(store, tmp_path)
    assert store.trainings.hand_back(training_id, "r")  # its replica stopped: queued again
    assert store.trainings.request_cancel(training_id)  # ended at once
    assert store.trainings.get(training_id)["status"] == "canceled"
    assert kept(store, training_id) == f"the state of {training_id} at step 3".encode()


def test_each_tenant_keeps_only_its_newest_stopped_checkpoints(store, tmp_path):
    bobs = checkpointed(store, tmp_path, "bob")
    store.trainings.finish(bobs, "canceled", replica="r")
    alices, keys = [], []
    for _ in range(4):  # more than the two trainings alice may run at once
        alices.append(checkpointed(store, tmp_path, "alice"))
        keys.append(store.trainings.get(alices[-1])["checkpoint_key"])
        store.trainings.finish(alices[-1], "canceled", replica="r")
    assert [kept(store, t) is not None for t in alices] == [False, False, True, True]
    assert [store.blobs.exists(key) for key in keys] == [False, False, True, True]
    assert kept(store, bobs) is not None  # another tenant's are its own
    running = checkpointed(store, tmp_path, "alice")  # a running one's is not counted
    store.trainings.finish(alices[0], "failed", replica="r")  # ended already: nothing changes
    assert kept(store, running) is not None and kept(store, alices[3]) is not None


def test_only_this_servers_checkpoint_urls_name_a_training():
    origins = ("http://127.0.0.1:5000", "https://sdxl.example.com/")
    path = "/v1/trainings/abc123/checkpoint"
    assert own_checkpoint_id("http://127.0.0.1:5000" + path, origins) == "abc123"
    assert own_checkpoint_id("HTTPS://SDXL.example.com" + path, origins) == "abc123"
    for other in (
        "http://127.0.0.1:5001" + path,  # another port
        "https://evil.example.com" + path,
        "http://127.0.0.1:5000/v1/trainings/abc123/weights",
        "http://127.0.0.1:5000/v1/trainings/abc123/checkpoint/x",
        "http://127.0.0.1:5000/v1/trainings/ABC/checkpoint",
        "http://127.0.0.1:5000" + path + "?x=1",
        "data:application/x-tar;base64,AAAA",
    ):
        assert own_checkpoint_id(other, origins) is None, other
