"""The job runtime on a real SQLite store, without a model: a prediction created here runs the
Request its API checked (one recovered after a restart is made again from the stored input),
and a caller waiting for a stored job is woken by its end, never by a timer."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from sdxl.inputs.request import Request
from sdxl.runtime import shared_queue
from sdxl.runtime.completions import Completions
from sdxl.runtime.kinds import PREDICTION
from sdxl.runtime.runtime import JobRuntime, RuntimeSettings
from sdxl.store.errors import StoreUnavailable
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import new_id

SERVED = frozenset({"stability-ai/sdxl"})


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "files", StoreLimits())
    yield opened
    opened.close()


def runtime_on(store: Store, tmp_path, poll_s: float = 5.0) -> JobRuntime:
    settings = RuntimeSettings(work_dir=tmp_path / "trainings", served=SERVED, store_poll_s=poll_s)
    return JobRuntime(store, settings, {PREDICTION: lambda row, base: {}})


def row_of(given: dict) -> dict:
    return dict(id=new_id(), model="stability-ai/sdxl", version="v", input=given, tenant="a")


def test_a_prediction_created_here_runs_the_request_its_api_checked(store, tmp_path):
    runtime = runtime_on(store, tmp_path)
    checked = Request(prompt="a checked cat", num_inference_steps=3, seed=7)
    created = runtime.create_prediction(row_of({"prompt": "a checked cat"}), checked)
    job = runtime.queue.claim(1.0)
    assert job.id == created["id"]
    assert job.request is checked  # not parsed again from the stored text
    runtime.close()


def test_a_recovered_prediction_is_made_again_from_its_stored_input(store, tmp_path):
    first = runtime_on(store, tmp_path)
    given = {"prompt": "a stored cat", "num_inference_steps": 3, "seed": 7}
    created = first.create_prediction(row_of(given), Request(prompt="never stored"))
    first.close()
    restarted = runtime_on(store, tmp_path)  # the checked Request died with the first
    job = restarted.queue.claim(1.0)
    assert job.id == created["id"]
    assert job.request == Request(prompt="a stored cat", num_inference_steps=3, seed=7)
    restarted.close()


def test_a_checked_request_another_replica_claimed_is_let_go(store, tmp_path):
    runtime = runtime_on(store, tmp_path)
    checked = Request(prompt="checked here", seed=1)
    created = runtime.create_prediction(row_of({"prompt": "stored", "seed": 1}), checked)
    assert store.predictions.claim("another-replica")["id"] == created["id"]
    runtime.predictions.prune()  # an expiry round: the prediction is not this replica's now
    store.replicas.release("another-replica")  # it stopped before starting it: queued again
    job = runtime.queue.claim(1.0)
    assert job.id == created["id"]
    assert job.request == Request(prompt="stored", seed=1)  # made again, not the one kept
    runtime.close()


def test_a_claim_whose_job_cannot_be_made_goes_back_to_the_queue(store, tmp_path, monkeypatch):
    monkeypatch.setattr(shared_queue, "STORE_RETRY_S", 0.05)
    runtime = runtime_on(store, tmp_path, poll_s=0.1)  # looks again soon after the failure
    created = runtime.create_prediction(row_of({"prompt": "x"}), Request(prompt="x"))
    job_for, calls = runtime.queue.job_for, []

    def failing_once(row: dict):
        calls.append(row["id"])
        if len(calls) == 1:
            raise StoreUnavailable("the database went away")
        return job_for(row)

    runtime.queue.job_for = failing_once
    assert runtime.queue.claim(0) is None  # claimed in the store, but no job was made
    assert store.predictions.get(created["id"])["claimed_by"] == runtime.replica
    job = runtime.queue.claim(5.0)  # the lost claim is handed back, then claimed again
    assert job is not None and job.id == created["id"]
    assert calls == [created["id"], created["id"]]
    runtime.close()


def test_a_cancel_between_the_claim_and_the_job_reaches_the_job(store, tmp_path):
    runtime = runtime_on(store, tmp_path)
    created = runtime.create_prediction(row_of({"prompt": "x"}), Request(prompt="x"))
    job_for = runtime.queue.job_for

    def cancelled_meanwhile(row: dict):
        # Claimed, not yet known here: the cancel finds no job to stop and only marks the row.
        runtime.cancel(PREDICTION, row["id"])
        return job_for(row)

    runtime.queue.job_for = cancelled_meanwhile
    job = runtime.queue.claim(1.0)
    assert job.id == created["id"] and job.cancel_requested
    runtime.close()


def test_a_cancelled_queued_prediction_wakes_its_waiter(store, tmp_path):
    runtime = runtime_on(store, tmp_path)
    created = runtime.create_prediction(row_of({"prompt": "x"}), Request(prompt="x"))

    async def wait_and_cancel():
        waiting = asyncio.ensure_future(runtime.until_ended(PREDICTION, created["id"], 60.0))
        await asyncio.sleep(0)  # the waiter reads the row and waits for a wake-up
        await asyncio.to_thread(runtime.cancel, PREDICTION, created["id"])
        return await asyncio.wait_for(waiting, 30.0)  # far sooner than its 60 s

    row = asyncio.run(wait_and_cancel())
    assert row["status"] == "canceled"
    runtime.close()


class Rows:
    """A job's row as a store would return it, counting the reads."""

    def __init__(self):
        self.status = "processing"
        self.reads = 0
        self.read_once = threading.Event()

    def read(self) -> dict:
        self.reads += 1
        self.read_once.set()
        return {"status": self.status}


def test_a_waiter_reads_once_then_only_at_each_wake_up():
    completions, rows = Completions(), Rows()

    def end_it() -> None:
        rows.read_once.wait(30)
        completions.ended("other")  # another job's end: not this waiter's
        rows.status = "succeeded"
        completions.ended("job-1")

    async def wait() -> dict:
        threading.Thread(target=end_it).start()
        return await completions.until_ended("job-1", 60.0, rows.read)

    assert asyncio.run(wait()) == {"status": "succeeded"}
    assert rows.reads == 2  # at the start, and after its own end; never on a timer


def test_an_empty_id_wakes_every_waiter():
    completions, first, second = Completions(), Rows(), Rows()

    def end_both() -> None:
        first.read_once.wait(30)
        second.read_once.wait(30)
        first.status = second.status = "failed"
        completions.ended("")  # the wake-ups reconnected: every waiter looks again

    async def wait() -> list:
        threading.Thread(target=end_both).start()
        return await asyncio.gather(
            completions.until_ended("a", 60.0, first.read),
            completions.until_ended("b", 60.0, second.read),
        )

    assert asyncio.run(wait()) == [{"status": "failed"}] * 2
    assert (first.reads, second.reads) == (2, 2)


def test_a_wait_that_runs_out_answers_the_row_as_it_is():
    completions, rows = Completions(), Rows()
    row = asyncio.run(completions.until_ended("job-1", 0.05, rows.read))
    assert row == {"status": "processing"}
    assert rows.reads == 2  # at the start and when the time ran out


@pytest.mark.parametrize("read_sees_it", [False, True], ids=["commit-unseen", "commit-seen"])
def test_a_read_of_the_turns_that_races_a_create_leaves_the_waiting_count_right(
    store, tmp_path, monkeypatch, read_sees_it
):
    """The health's count of stored jobs waiting is kept without a database call: a create
    whose commit the claim thread's read of the turns missed, or saw before the create counted
    itself, is counted once."""
    runtime = runtime_on(store, tmp_path)
    queue = runtime.queue
    runtime.create_prediction(row_of({"prompt": "first"}), Request(prompt="first"))
    read_turns = store.predictions.turns
    racing = row_of({"prompt": "racing"})
    write = contextlib.ExitStack()

    def turns_raced_by_a_create():
        if read_sees_it:  # committed before the read; counts itself after the claim
            write.enter_context(queue.writing())
            store.predictions.create(racing)
            return read_turns()
        turns = read_turns()
        runtime.create_prediction(racing, Request(prompt="racing"))  # after the read
        return turns

    monkeypatch.setattr(store.predictions, "turns", turns_raced_by_a_create)
    assert queue.claim(1.0) is not None
    if read_sees_it:
        queue.created()
        write.close()
    assert queue.waiting() == 1 == store.predictions.count_queued()
    monkeypatch.setattr(store.predictions, "turns", read_turns)
    assert queue.claim(1.0).id == racing["id"]
    assert queue.waiting() == 0
    runtime.close()
