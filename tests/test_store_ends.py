"""The store tells who waits for a job that it ended (the ENDS channel, `sdxl.store.job_rows`), with
the job's id: a finish, a queued job cancelled, a prediction failed for a dead or restarted
replica; a cancel that only reaches a claimed job, a training queued again, or expiry tells
nothing. On SQLite this process's commits; on PostgreSQL every replica, also to a listener
added after the wake-ups started."""

from __future__ import annotations

import threading

import pytest
from support.helpers import wait_until
from support.postgres import fresh_database

from sdxl.store.job_rows import CANCELS, ENDS
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import new_id


def opened(url: str, tmp_path) -> Store:
    store = Store(url, tmp_path / "files", StoreLimits(ttl_s=0.0))
    store.destinations.create(
        dict(owner="alice", name="m", tenant="alice", visibility="private", hardware="gpu")
    )
    return store


def heard(store: Store, channel: str) -> list[str]:
    payloads: list[str] = []
    store.wakeups.on(channel, payloads.append)
    return payloads


def prediction(store: Store) -> str:
    row = dict(id=new_id(), model="o/m", version="v", input={}, tenant="alice")
    return store.predictions.create(row)["id"]


def training(store: Store) -> str:
    row = dict(id=new_id(), model="o/m", version="v", destination="alice/m", input={})
    return store.trainings.create({**row, "tenant": "alice"})["id"]


@pytest.fixture
def store(tmp_path):
    store = opened(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    yield store
    store.close()


def test_every_end_of_a_job_is_told_with_its_id(store):
    ends, cancels = heard(store, ENDS), heard(store, CANCELS)
    done = prediction(store)
    assert store.predictions.claim("r")["id"] == done and store.predictions.started(done, "r")
    assert ends == []  # created, claimed, started: not ended
    assert store.predictions.finish(done, "succeeded", replica="r")
    assert ends == [done]
    assert not store.predictions.finish(done, "failed")  # ended once, told once
    assert ends == [done]

    queued = prediction(store)
    assert store.predictions.request_cancel(queued)
    assert ends == [done, queued]
    claimed = prediction(store)
    store.predictions.claim("r")
    assert not store.predictions.request_cancel(claimed)  # its replica ends it
    assert cancels == [claimed] and ends == [done, queued]

    trained = training(store)
    assert store.trainings.claim("r")["id"] == trained
    assert store.trainings.hand_back(trained, "r")  # queued again: not ended
    assert store.trainings.request_cancel(trained)
    assert ends[-1] == trained
    finished = training(store)
    store.trainings.claim("r")
    assert store.trainings.finish(finished, "failed", replica="r", error="no")["status"] == "failed"
    assert ends[-1] == finished


def test_a_dead_or_restarted_replica_s_failed_predictions_are_told_one_by_one(store):
    ends = heard(store, ENDS)
    running = [prediction(store) for _ in range(2)]
    waiting, trained = prediction(store), training(store)
    for prediction_id in running:
        assert store.predictions.claim("dead")["id"] == prediction_id
        assert store.predictions.started(prediction_id, "dead")
    store.predictions.claim("dead")
    assert store.trainings.claim("dead")["id"] == trained
    assert store.replicas.abandon(["dead"], "it died") == (2, 2)
    assert sorted(ends) == sorted(running)  # the queued ones wait again: not ended
    restarted = prediction(store)
    assert store.predictions.claim("only")["id"] == waiting
    assert store.predictions.started(waiting, "only")
    assert store.predictions.claim("only")["id"] == restarted  # claimed, not started
    assert store.replicas.recover("restarted") == (1, 1)
    assert ends[2:] == [waiting] and store.predictions.get(restarted)["claimed_by"] is None
    store.predictions.request_cancel(restarted)
    told = len(ends)
    assert store.expire(now=store.predictions.get(restarted)["completed_at"] + 1) > 0
    assert len(ends) == told  # expiry removes ended jobs: nobody waits for them


def test_postgresql_tells_every_replica_also_a_listener_added_after_start(postgres_url, tmp_path):
    url = fresh_database(postgres_url, "sdxl_ends")
    here, there = opened(url, tmp_path / "here"), opened(url, tmp_path / "there")
    try:
        heard(here, CANCELS)
        here.wakeups.start()
        wait_until(here.wakeups.connected.is_set, "listened", timeout=30)
        looked = threading.Event()
        ends: list[str] = []

        def on_end(payload: str) -> None:
            if payload:
                ends.append(payload)
            else:  # "": look at the store afresh
                looked.set()

        here.wakeups.on(ENDS, on_end)  # after start
        wait_until(looked.is_set, "the late listener looked afresh", timeout=30)
        ended = prediction(there)
        assert there.predictions.request_cancel(ended)
        wait_until(lambda: ends == [ended], "the other replica's end heard", timeout=30)
    finally:
        here.close()
        there.close()
