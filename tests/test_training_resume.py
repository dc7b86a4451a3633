"""Nothing of a training is lost when its server stops or dies: SIGTERM saves a checkpoint and
hands the training back, and the restarted server goes on from it (SQLite); a replica killed
mid-training has its training resumed by another replica from the last checkpoint (a real
PostgreSQL pair). Either way the trained weights equal an uninterrupted training's, byte for
byte (float32 on the CPU). Steps and checkpoints are read from the trainings' logs and the
real databases, never from the clock."""

from __future__ import annotations

import io
import re
import signal
import tarfile
import time

import pytest
import replicate
import requests
import sqlalchemy as sa
from support.api_server import GUIDE_VERSION, Server, serving
from support.archives import photos, write_zip
from support.postgres import fresh_database

pytestmark = pytest.mark.http

KEY = "alice-key"
STEPS = 20
INPUTS = {
    "max_train_steps": STEPS,
    "checkpointing_steps": 5,
    "resolution": 256,
    "train_batch_size": 2,
    "lora_rank": 4,
    "lora_lr": 5e-3,
    "ti_lr": 5e-3,
    "lr_warmup_steps": 2,
    "name": "resumed",  # the web UI files' name, the same in both tars
    "seed": 5,
}
ENDED = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("resume") / "photos.zip", photos(3))


def client_of(server: Server) -> replicate.Client:
    return replicate.Client(api_token=KEY, base_url=server.base)


def start_training(server: Server, zipped, name: str = "resumed"):
    client = client_of(server)
    client.models.create(owner="alice", name=name, visibility="private", hardware="gpu")
    with open(zipped, "rb") as archive:
        return client.trainings.create(
            model="stability-ai/sdxl",
            version=GUIDE_VERSION,
            input={"input_images": archive, **INPUTS},
            destination=f"alice/{name}",
        )


def finished(client: replicate.Client, training_id: str):
    training = client.trainings.get(training_id)
    while training.status not in ENDED:
        training.reload()
    assert training.status == "succeeded", training.error
    return training


def tar_members(server: Server, training_id: str) -> dict[str, bytes]:
    answer = requests.get(
        f"{server.base}/v1/trainings/{training_id}/weights",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def steps_logged(logs: str) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in logs.splitlines() if line[:5] == "step "]


def resumed_from(logs: str) -> int:
    (line,) = [line for line in logs.splitlines() if line.startswith("resumed from step ")]
    return int(line.split()[3])


def stored(url: str, training_id: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT status, claimed_by, checkpoint_step FROM trainings WHERE id = :i"),
                {"i": training_id},
            ).one()
        return dict(row._mapping)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def uninterrupted(tiny_weights, tmp_path_factory, zipped) -> dict[str, bytes]:
    """The same training never interrupted, on an engine in this process with one intra-op
    thread, as the servers run (OMP_NUM_THREADS=1: the order of float32 sums is theirs)."""
    import torch
    from conftest import start_engine

    from sdxl.train.options import TrainRequest
    from sdxl.train.training import Training

    folder = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = start_engine(tiny_weights)
    try:
        request = TrainRequest(input_images=str(zipped), **INPUTS)
        result = engine.run_training(Training(request, folder))
    finally:
        engine.close()
        torch.set_num_threads(threads)
    assert result.steps == STEPS
    with tarfile.open(result.weights) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


# Slow: two servers and a training (about 35 s); test_trainings_api resumes from a checkpoint,
# test_train equals the uninterrupted weights, test_load's SIGTERM hands back what waits.
@pytest.mark.slow
def test_sigterm_hands_the_training_back_and_the_restart_goes_on(
    tiny_weights, tmp_path, zipped, uninterrupted
):
    env = {"SDXL_API_KEYS": f"alice:{KEY}", "SDXL_STATE_DIR": str(tmp_path / "state")}
    first = Server(tiny_weights, tmp_path, env)
    try:
        first.wait_ready()
        training = start_training(first, zipped)
        while not any(step >= 6 for step in steps_logged(training.logs or "")):
            training.reload()
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=120) == 0, first.log()
    finally:
        first.stop()
    assert "handed back to the queue" in first.log()
    (signalled,) = map(
        int, re.findall(rf"stopping training {training.id} after step (\d+)", first.log())
    )
    row = stored(f"sqlite:///{tmp_path / 'state' / 'predictions.db'}", training.id)
    assert row["status"] == "starting" and row["claimed_by"] is None
    # Saved as it stopped: after the step under way when the signal came, at the latest.
    assert 6 <= row["checkpoint_step"] < STEPS and row["checkpoint_step"] - signalled in (0, 1)
    with serving(tiny_weights, tmp_path, env) as second:
        done = finished(client_of(second), training.id)
        resumed = resumed_from(done.logs)
        assert resumed == row["checkpoint_step"]
        logged = steps_logged(done.logs)
        assert logged == sorted(set(logged)) == list(range(1, STEPS + 1))  # none ran twice
        assert tar_members(second, training.id) == uninterrupted


@pytest.mark.slow  # the SIGTERM test resumes from the checkpoint; test_replicas settles the dead
def test_a_killed_replicas_training_is_resumed_by_another_from_its_checkpoint(
    tiny_weights, tmp_path, zipped, uninterrupted, postgres_url
):
    database = fresh_database(postgres_url, "sdxl_training_resume")
    env = {
        "SDXL_API_KEYS": f"alice:{KEY}",
        "SDXL_DATABASE_URL": database,
        "SDXL_FILES_DIR": str(tmp_path / "files"),
        "SDXL_REPLICA_TIMEOUT": "2",
    }
    gate = tmp_path / "gate"  # the second replica loads its model only once this exists
    first = Server(tiny_weights, tmp_path, env)
    second = Server(tiny_weights, tmp_path, env, gate=gate)
    try:
        first.wait_ready()
        second.wait_for(lambda h: h["status"] == "loading", "serving while loading")
        training = start_training(first, zipped)
        while not (stored(database, training.id)["checkpoint_step"] or 0) >= 5:
            time.sleep(0.05)
        first.proc.kill()  # SIGKILL: no drain, no hand-back; its heartbeats stop
        first.proc.wait(timeout=30)
        gate.touch()
        second.wait_ready()
        done = finished(client_of(second), training.id)
        checkpoint = resumed_from(done.logs)
        assert checkpoint >= 5 and checkpoint % 5 == 0  # a periodic checkpoint of the first
        logged = steps_logged(done.logs)
        assert [s for s in logged if s <= checkpoint] == list(range(1, checkpoint + 1))
        assert logged[-(STEPS - checkpoint) :] == list(range(checkpoint + 1, STEPS + 1))
        assert tar_members(second, training.id) == uninterrupted
        assert "stopped beating" in second.log()
    finally:
        first.stop()
        second.stop()
