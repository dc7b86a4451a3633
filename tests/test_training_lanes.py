"""A training stuck in its preparation (a long or hostile archive read) holds no one else back:
another tenant's stored training is claimed and runs meanwhile, a generation is prepared and
runs meanwhile (trainings prepare on threads of their own), and a cancel ends it within a MiB
of the read. The engine's lanes run here without a model (the GPU thread runs the jobs' own
work), on a real SQLite store and the shared queue; ordered by events, never by time."""

from __future__ import annotations

import bz2
import contextlib
import threading
import time
from types import SimpleNamespace

import pytest
from support.archives import photos, write_tar
from support.stores import store_with_destination

from sdxl.engine import EngineBroken, Job, JobStatus, MemoryQueue, TrainingJob
from sdxl.engine.device_tasks import DeviceTasks
from sdxl.engine.lanes import TRAININGS_PREPARED_AT_ONCE, Hooks, Lanes
from sdxl.runtime.shared_queue import SharedQueue
from sdxl.store.store import Store
from sdxl.store.tables import new_id
from sdxl.train.archive import ArchiveLimits
from sdxl.train.options import TrainRequest
from sdxl.train.training import Training, TrainSettings

MIB = 1 << 20


class HeldWork:
    """A training's work whose preparation lasts until `release` (as a long archive read does),
    checking for a cancel meanwhile; one slice, then a result."""

    def __init__(self, held: bool):
        self.release = threading.Event()
        if not held:
            self.release.set()
        self.preparing = threading.Event()

    def prepare(self, check) -> None:
        self.preparing.set()
        while not self.release.wait(0.01):
            check()

    def slices(self, models, job):
        yield "step"

    def finish(self):
        return "trained"


class Quick(Job):
    """A generation's stand-in: prepared at once, no GPU work."""

    runs_between_slices = True

    def prepare(self, runner) -> None:
        return None

    def run_on(self, lanes) -> None:
        self.started_at = time.time()
        lanes.off_the_gpu(self, None, None)

    def finish(self, runner, denoised):
        return "generated"

    def done_line(self, took: float) -> str:
        return "done"


@contextlib.contextmanager
def running_lanes(queue, prepare_workers: int = 1):
    """The engine's threads over `queue`, without a model."""
    lock = threading.RLock()
    hooks = Hooks(
        takes_stored=lambda: True,
        broken=lambda: None,
        break_down=EngineBroken,
        free_memory=lambda: None,
        observe=lambda job: None,
    )
    lanes = Lanes(queue, lock, DeviceTasks(lock), hooks, prepare_workers)
    warmed = threading.Event()
    lanes.start(SimpleNamespace(models=None), lambda: None, warmed)
    assert warmed.wait(30)
    try:
        yield lanes
    finally:
        lanes.close()


@pytest.fixture
def store(tmp_path):
    opened = store_with_destination(tmp_path)
    yield opened
    opened.close()


def stored_training(store: Store, tenant: str) -> str:
    training_id = new_id()
    row = dict(id=training_id, model="stability-ai/sdxl", version="v", destination="alice/m")
    store.trainings.create({**row, "input": {}, "tenant": tenant})
    return training_id


def until(predicate, seconds: float = 30) -> bool:
    """Whether `predicate()` came true within `seconds` (a bound, not a measure)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_training_stuck_in_its_preparation_holds_back_no_other_tenant(store):
    """One preparation worker: alice's training stays in its archive read; bob's training is
    claimed, prepared and run, and a generation too, before alice's read ends (her cancel)."""
    alice_id, bob_id = stored_training(store, "alice"), stored_training(store, "bob")
    works = {alice_id: HeldWork(held=True), bob_id: HeldWork(held=False)}
    jobs: dict[str, TrainingJob] = {}

    def training_for(row: dict) -> Job:
        jobs[row["id"]] = TrainingJob(row["id"], works[row["id"]], tenant=row["tenant"])
        return jobs[row["id"]]

    queue = SharedQueue(store, "r", lambda row: Quick(row["id"]), 0.1, training_for)
    with running_lanes(queue, prepare_workers=1) as lanes:
        assert works[alice_id].preparing.wait(30)
        quick = Quick("generation", tenant="carol")
        lanes.submit(quick)
        assert until(lambda: bob_id in jobs)
        assert jobs[bob_id].wait(30) and jobs[bob_id].result() == "trained"
        assert quick.wait(30) and quick.result() == "generated"
        alice = jobs[alice_id]
        assert alice.status == JobStatus.PREPARING and not alice.done()  # still reading
        alice.cancel()
        assert alice.wait(30) and alice.status == JobStatus.CANCELED


def test_the_queue_claims_another_tenants_training_only_while_those_held_are_prepared(store):
    """Trainings of other tenants are claimed while the ones held are still being prepared, up
    to TRAININGS_PREPARED_AT_ONCE; none while one held is prepared (one runs at a time), nor a
    second of the same tenant."""
    assert TRAININGS_PREPARED_AT_ONCE == 2
    alice = [stored_training(store, "alice"), stored_training(store, "alice")]
    bob, carol = stored_training(store, "bob"), stored_training(store, "carol")
    jobs: dict[str, TrainingJob] = {}

    def training_for(row: dict) -> Job:
        jobs[row["id"]] = TrainingJob(row["id"], None, tenant=row["tenant"])
        return jobs[row["id"]]

    queue = SharedQueue(store, "r", lambda row: Quick(row["id"]), 0.1, training_for)
    assert queue.claim(timeout=1).id == alice[0]
    assert queue.claim(timeout=1).id == bob  # alice's is being prepared: bob's goes ahead
    assert queue.claim(timeout=0.3) is None  # two being prepared: carol's waits
    jobs[alice[0]].future.set_result(None)  # alice's first ended (its archive refused)
    assert queue.claim(timeout=1).id == carol
    jobs[bob].status = JobStatus.READY  # bob's is prepared: no other training now
    jobs[carol].future.set_result(None)
    assert queue.claim(timeout=0.3) is None
    jobs[bob].future.set_result(None)
    assert queue.claim(timeout=1).id == alice[1]


def test_a_training_cancelled_in_its_archive_read_ends_canceled_within_a_mib(tmp_path, monkeypatch):
    """A tar.bz2 whose hidden member is 48 MiB of zeros (under a 64 MiB budget): the read is
    held once 2 MiB are decompressed, the training is cancelled there, and it ends canceled
    with at most one more read of a MiB decompressed."""
    path = write_tar(tmp_path / "in.tar.bz2", {".hidden": bytes(48 * MIB), **photos(2)}, "w:bz2")
    reading, go = threading.Event(), threading.Event()
    counted = [0]
    real = bz2.BZ2File.read

    def read(self, size=-1):
        data = real(self, size)
        counted[0] += len(data)
        if counted[0] >= 2 * MIB and not reading.is_set():
            reading.set()
            assert go.wait(30)
        return data

    monkeypatch.setattr(bz2.BZ2File, "read", read)
    settings = TrainSettings(archive=ArchiveLimits(max_bytes=64 * MIB))
    work = Training(TrainRequest(input_images=str(path)), tmp_path / "work", settings)
    with running_lanes(MemoryQueue()) as lanes:
        job = TrainingJob("t", work)
        lanes.submit(job)
        assert reading.wait(30)
        job.cancel()
        go.set()
        assert job.wait(30) and job.status == JobStatus.CANCELED
    assert str(job.error) == TrainingJob.CANCELED
    assert counted[0] <= 3 * MIB  # the 2 MiB before the cancel, then one read at most
