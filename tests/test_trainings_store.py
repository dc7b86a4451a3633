"""Stored trainings on a real SQLite store, without a model: what a replica's stop, death or
restart does to them (queued again with their checkpoint, never failed), one training per
replica, the tenants' turns across predictions and trainings, cancels, and a succeeded
training's version."""

from __future__ import annotations

import pytest
from support.stores import store_with_destination

from sdxl.engine import GenerationJob, Job, TrainingJob
from sdxl.inputs.request import Request
from sdxl.runtime.shared_queue import SharedQueue
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import new_id


@pytest.fixture
def store(tmp_path):
    opened = store_with_destination(tmp_path)
    yield opened
    opened.close()


def training(store: Store, tenant: str = "alice") -> str:
    training_id = new_id()
    row = dict(id=training_id, model="stability-ai/sdxl", version="v", destination="alice/m")
    store.trainings.create({**row, "input": {}, "tenant": tenant})
    return training_id


def prediction(store: Store, tenant: str = "alice") -> str:
    prediction_id = new_id()
    row = dict(id=prediction_id, model="stability-ai/sdxl", version="v", input={})
    store.predictions.create({**row, "tenant": tenant})
    return prediction_id


def running_with_checkpoint(store: Store, replica: str, tmp_path) -> str:
    training_id = training(store)
    assert store.trainings.claim(replica)["id"] == training_id
    assert store.trainings.started(training_id, replica)
    checkpoint = tmp_path / "step-5.tar"
    checkpoint.write_bytes(b"the state at step 5")
    assert store.trainings.keep_checkpoint(training_id, replica, 5, checkpoint)
    return training_id


def test_a_restart_queues_the_running_training_again_with_its_checkpoint(store, tmp_path):
    training_id = running_with_checkpoint(store, "old", tmp_path)
    store.replicas.recover("the server stopped")  # the only replica, started again
    row = store.trainings.get(training_id)
    assert (row["status"], row["claimed_by"], row["error"]) == ("starting", None, None)
    assert store.blobs.read(row["checkpoint_key"]) == b"the state at step 5"
    assert store.trainings.claim("new")["checkpoint_step"] == 5


def test_a_dead_replicas_training_is_queued_again_not_failed(store, tmp_path):
    training_id = running_with_checkpoint(store, "dead", tmp_path)
    assert "dead" in store.replicas.heartbeats()  # its claim makes it one to watch
    failed, requeued = store.replicas.abandon(["dead"], "it died")
    assert (failed, requeued) == (0, 1)
    row = store.trainings.get(training_id)
    assert (row["status"], row["claimed_by"], row["checkpoint_step"]) == ("starting", None, 5)


def test_a_newer_checkpoint_replaces_the_older_and_the_end_removes_both_files(store, tmp_path):
    training_id = running_with_checkpoint(store, "r", tmp_path)
    first = store.trainings.get(training_id)["checkpoint_key"]
    later = tmp_path / "step-10.tar"
    later.write_bytes(b"the state at step 10")
    assert store.trainings.keep_checkpoint(training_id, "r", 10, later)
    second = store.trainings.get(training_id)["checkpoint_key"]
    assert not store.blobs.exists(first) and store.blobs.exists(second)
    assert not store.trainings.keep_checkpoint(training_id, "other", 15, later)  # not its own
    tar = tmp_path / "trained_model.tar"
    tar.write_bytes(b"weights")
    ended = store.trainings.finish(training_id, "succeeded", replica="r", weights=tar)
    assert ended["output"] == {"version": f"alice/m:{training_id}"}
    assert not store.blobs.exists(second)
    version = store.destinations.find_version(f"alice/m:{training_id}", "alice")
    assert store.blobs.read(version["weights_key"]) == b"weights"
    assert store.destinations.find_version(training_id, "bob") is None  # not bob's model
    assert store.trainings.finish(training_id, "failed", replica="r") is None  # ended once


def test_a_replica_holds_one_training_at_a_time_and_predictions_go_on(store):
    first, second = training(store), training(store)
    queued = prediction(store)
    jobs: list[Job] = []

    def training_job(row: dict) -> Job:
        jobs.append(TrainingJob(row["id"], object(), tenant=row["tenant"]))
        return jobs[-1]

    queue = SharedQueue(
        store, "r", lambda row: GenerationJob(row["id"], Request()), 0.1, training_job
    )
    assert queue.claim(timeout=1).id == first
    assert queue.claim(timeout=1).id == queued  # the second training waits
    assert queue.claim(timeout=0.3) is None
    jobs[0].future.set_result(None)  # the first training ended here
    assert queue.claim(timeout=1).id == second


def test_tenants_take_turns_across_trainings_and_predictions(store):
    alice = [training(store, "alice"), prediction(store, "alice"), prediction(store, "alice")]
    bob = prediction(store, "bob")
    queue = SharedQueue(
        store,
        "r",
        lambda row: GenerationJob(row["id"], Request()),
        0.1,
        lambda row: TrainingJob(row["id"], None),
    )
    order = [queue.claim(timeout=1).id for _ in range(4)]
    assert order == [alice[0], bob, alice[1], alice[2]]  # bob's after alice's first job


def test_a_replica_for_predictions_only_leaves_trainings_to_others(store):
    waiting = training(store)
    queued = prediction(store)
    queue = SharedQueue(
        store,
        "serving",
        lambda row: GenerationJob(row["id"], Request()),
        0.1,
        lambda row: TrainingJob(row["id"], None),
        kinds=("predictions",),
    )
    assert queue.claim(timeout=1).id == queued
    assert queue.claim(timeout=0.3) is None
    assert store.trainings.get(waiting)["claimed_by"] is None


def test_a_cancel_ends_a_queued_training_at_once_and_marks_a_claimed_one(store, tmp_path):
    claimed = running_with_checkpoint(store, "r", tmp_path)
    queued = training(store)
    assert store.trainings.request_cancel(queued)
    assert store.trainings.get(queued)["status"] == "canceled"
    assert not store.trainings.cancels_requested([claimed])
    assert not store.trainings.request_cancel(claimed)  # its replica stops it
    assert store.trainings.cancels_requested([claimed]) == [claimed]
    assert store.trainings.get(claimed)["status"] == "processing"


def test_too_many_trainings_of_a_tenant_are_refused(tmp_path):
    from sdxl.store.errors import StoreFull

    limits = StoreLimits(max_trainings_per_tenant=1)
    opened = Store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "files", limits)
    try:
        training(opened, "alice")
        with pytest.raises(StoreFull):
            training(opened, "alice")
        training(opened, "bob")  # another tenant's own count
    finally:
        opened.close()
