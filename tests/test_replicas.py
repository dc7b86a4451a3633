"""Replicas of one store watching each other (sdxl/api/replicate/replicas.py), on a real
SQLite file: a replica that stops beating is settled by the others, and one that was only slow
finds its claims gone and cannot run or end them a second time."""

from __future__ import annotations

import time

import pytest

from sdxl.api.replicate.replicas import DEAD_MESSAGE, Replicas
from sdxl.api.replicate.store import Store, new_id
from sdxl.api.settings import StoreLimits

TIMEOUT_S = 0.3


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'predictions.db'}", StoreLimits())


def queued(store: Store) -> str:
    row = store.create({"id": new_id(), "model": "o/m", "version": "v", "input": {}})
    return row["id"]


def test_a_silent_replica_is_settled_once_and_loses_its_claims(store):
    slow, watcher = Replicas(store, "slow", TIMEOUT_S), Replicas(store, "watcher", TIMEOUT_S)
    slow.beat()
    running, waiting = queued(store), queued(store)
    assert store.claim("slow")["id"] == running and store.started(running, "slow")
    assert store.claim("slow")["id"] == waiting
    assert watcher.reap() == []  # first sight: the clock for "slow" starts now
    slow.beat()
    time.sleep(TIMEOUT_S / 2)
    assert watcher.reap() == []  # it beat since: alive
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == ["slow"]
    lost = store.get(running)
    assert lost["status"] == "failed" and lost["error"] == DEAD_MESSAGE
    assert store.get(waiting)["claimed_by"] is None  # queued again, for anyone
    assert "slow" not in store.heartbeats()
    # "slow" was only slow: what it tries next with its old claims changes nothing.
    assert not store.finish(running, "succeeded", images=[("a.png", "image/png", b"x")])
    assert store.get(running)["status"] == "failed" and store.outputs_of(running) == []
    assert store.claim("watcher")["id"] == waiting
    assert not store.started(waiting, "slow")
    assert not store.finish(waiting, "succeeded", replica="slow")
    assert store.started(waiting, "watcher")
    assert store.finish(waiting, "succeeded", replica="watcher")
    assert watcher.reap() == []  # settled once: nothing left of "slow"


def test_claims_without_a_heartbeat_row_are_settled_too(store):
    orphan = queued(store)
    assert store.claim("gone-before-its-first-beat")["id"] == orphan
    watcher = Replicas(store, "watcher", TIMEOUT_S)
    assert watcher.reap() == []
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == ["gone-before-its-first-beat"]
    assert store.get(orphan)["claimed_by"] is None


def test_a_replica_that_leaves_is_forgotten_without_a_warning(store):
    leaving, watcher = Replicas(store, "leaving", TIMEOUT_S), Replicas(store, "watcher", TIMEOUT_S)
    leaving.beat()
    watcher.reap()
    leaving.leave()
    time.sleep(TIMEOUT_S * 1.5)
    assert watcher.reap() == []
    assert store.heartbeats() == {}


def test_a_stopping_replica_hands_back_what_it_claimed_and_did_not_start(store):
    running, claimed = queued(store), queued(store)
    assert store.claim("stopping")["id"] == running and store.started(running, "stopping")
    assert store.claim("stopping")["id"] == claimed
    assert store.release("stopping") == 1
    assert store.get(running)["claimed_by"] == "stopping"  # it finishes the one it runs
    assert store.get(claimed)["status"] == "starting" and store.get(claimed)["claimed_by"] is None
    assert not store.started(claimed, "stopping")  # too late to start it: it is not its own
    assert not store.finish(claimed, "canceled", replica="stopping")  # nor to end it
    assert store.claim("another")["id"] == claimed
