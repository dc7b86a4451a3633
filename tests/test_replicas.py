"""Replicas of one store watching each other (sdxl/runtime/heartbeats.py), on a real
SQLite file: a replica that stops beating is settled by the others, one that was only slow
finds its claims gone and cannot run or end them a second time, and a claim whose answer was
lost is queued again."""

from __future__ import annotations

import time

import pytest

from sdxl.engine import GenerationJob
from sdxl.inputs.request import Request
from sdxl.runtime import shared_queue
from sdxl.runtime.heartbeats import DEAD_MESSAGE, Heartbeats
from sdxl.runtime.shared_queue import SharedQueue
from sdxl.store.errors import StoreUnavailable
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import new_id

TIMEOUT_S = 0.3


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'predictions.db'}", tmp_path / "files", StoreLimits())


def queued(store: Store) -> str:
    row = store.predictions.create({"id": new_id(), "model": "o/m", "version": "v", "input": {}})
    return row["id"]


def test_a_silent_replica_is_settled_once_and_loses_its_claims(store):
    rows = store.predictions
    slow, watcher = Heartbeats(store, "slow", TIMEOUT_S), Heartbeats(store, "watcher", TIMEOUT_S)
    slow.beat()
    running, waiting = queued(store), queued(store)
    assert rows.claim("slow")["id"] == running and rows.started(running, "slow")
    assert rows.claim("slow")["id"] == waiting
    assert watcher.reap() == []  # first sight: the clock for "slow" starts now
    slow.beat()
    time.sleep(TIMEOUT_S / 2)
    assert watcher.reap() == []  # it beat since: alive
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == ["slow"]
    lost = rows.get(running)
    assert lost["status"] == "failed" and lost["error"] == DEAD_MESSAGE
    assert rows.get(waiting)["claimed_by"] is None  # queued again, for anyone
    assert "slow" not in store.replicas.heartbeats()
    # "slow" was only slow: what it tries next with its old claims changes nothing.
    assert not rows.finish(running, "succeeded", images=[("a.png", "image/png", b"x")])
    assert rows.get(running)["status"] == "failed" and rows.outputs_of(running) == []
    assert rows.claim("watcher")["id"] == waiting
    assert not rows.started(waiting, "slow")
    assert not rows.finish(waiting, "succeeded", replica="slow")
    assert rows.started(waiting, "watcher")
    assert rows.finish(waiting, "succeeded", replica="watcher")
    assert watcher.reap() == []  # settled once: nothing left of "slow"


def test_claims_without_a_heartbeat_row_are_settled_too(store):
    rows = store.predictions
    orphan = queued(store)
    assert rows.claim("gone-before-its-first-beat")["id"] == orphan
    watcher = Heartbeats(store, "watcher", TIMEOUT_S)
    assert watcher.reap() == []
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == ["gone-before-its-first-beat"]
    assert rows.get(orphan)["claimed_by"] is None


def test_a_replica_that_leaves_is_forgotten_without_a_warning(store):
    leaving, watcher = (
        Heartbeats(store, "leaving", TIMEOUT_S),
        Heartbeats(store, "watcher", TIMEOUT_S),
    )
    leaving.beat()
    watcher.reap()
    leaving.leave()
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == []
    assert store.replicas.heartbeats() == {}


def test_a_stopping_replica_hands_back_what_it_claimed_and_did_not_start(store):
    rows = store.predictions
    running, claimed = queued(store), queued(store)
    assert rows.claim("stopping")["id"] == running and rows.started(running, "stopping")
    assert rows.claim("stopping")["id"] == claimed
    assert store.replicas.release("stopping") == 1
    assert rows.get(running)["claimed_by"] == "stopping"  # it finishes the one it runs
    assert rows.get(claimed)["status"] == "starting" and rows.get(claimed)["claimed_by"] is None
    assert not rows.started(claimed, "stopping")  # too late to start it: it is not its own
    assert not rows.finish(claimed, "canceled", replica="stopping")  # nor to end it
    assert rows.claim("another")["id"] == claimed


class CommitsThenLosesTheAnswer:
    """The real store's predictions, but the `lost`-th claim is committed and its answer lost,
    as when the database goes away between the commit and the reply."""

    def __init__(self, predictions, lost: int):
        self.predictions, self.lost, self.claims = predictions, lost, 0

    def claim(self, replica, tenant=None):
        self.claims += 1
        row = self.predictions.claim(replica, tenant)
        if self.claims == self.lost:
            raise StoreUnavailable("server closed the connection unexpectedly")
        return row

    def __getattr__(self, name):
        return getattr(self.predictions, name)


def test_a_claim_whose_answer_was_lost_is_queued_again_once_the_store_answers(store, monkeypatch):
    monkeypatch.setattr(shared_queue, "STORE_RETRY_S", 0.2)  # then it asks the store again
    ran_unwritten, lost, after = queued(store), queued(store), queued(store)
    monkeypatch.setattr(store, "predictions", CommitsThenLosesTheAnswer(store.predictions, lost=2))
    monkeypatch.setattr(type(store), "shared", True)  # as replicas of one database
    queue = SharedQueue(store, "replica", lambda row: GenerationJob(row["id"], Request(prompt="a")))
    first = queue.claim(timeout=1)
    assert first.id == ran_unwritten  # runs; its start is never written (the store is away)
    first.future.set_result(None)  # it ended, its result not yet stored: no longer held
    assert queue.claim(timeout=0) is None  # the claim of `lost` was committed, its answer lost
    assert store.predictions.get(lost)["claimed_by"] == "replica"
    # The store answers again: `lost` is queued again and claimed for real, in its turn; the
    # one that ran keeps its claim (its result is stored under it), and nothing runs twice.
    assert [queue.claim(timeout=5).id for _ in range(2)] == [lost, after]
    assert store.predictions.get(ran_unwritten)["claimed_by"] == "replica"
    assert store.predictions.get(ran_unwritten)["status"] == "starting"
    assert store.predictions.finish(ran_unwritten, "succeeded", replica="replica", started_at=1.0)
    assert store.predictions.get(ran_unwritten)["started_at"] == 1.0  # the start it could not write
