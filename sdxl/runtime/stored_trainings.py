"""Stored trainings on the engine: the job for a claimed row (its files brought here, its
checkpoint resumed), and every change of its state written back to the store: the start, the
logs and step, each checkpoint (in the files backend, off the GPU thread), and the end. A
succeeded training's tar becomes a version of its destination; a training stopped by a drain
is handed back to the queue with its last checkpoint, for any replica to go on from. A training
cancelled (or failed) after a step keeps its checkpoint for its owner: its log ends with the
checkpoint's URL (CHECKPOINT_PATH, on Replicate's API), which `resume_from_checkpoint` takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sdxl.engine import Job, JobEvents, TrainingJob
from sdxl.errors import InputError
from sdxl.net import http_get
from sdxl.net.urls import redact
from sdxl.runtime.events import Events
from sdxl.runtime.kinds import TRAINING
from sdxl.runtime.stored_runs import StoredRuns, log_text
from sdxl.settings import FetchSettings
from sdxl.store.errors import StoreUnavailable
from sdxl.store.store import Store
from sdxl.store.tables import StoredStatus
from sdxl.train.options import FILE_INPUTS

if TYPE_CHECKING:
    from sdxl.train.train_settings import TrainSettings

log = logging.getLogger(__name__)

LOST_CLAIM = "this replica lost its claim on the training, which another replica holds now"
STORE_WAIT_S = 20.0  # at a stop, how long the last checkpoint and hand-backs may take
CHECKPOINT_PATH = "/v1/trainings/{}/checkpoint"  # a stopped training's, for its owner's key
_CHECKPOINT_PATH = re.compile(r"/v1/trainings/([a-z0-9]{1,40})/checkpoint")
RESUME = "resume_from_checkpoint"


def own_checkpoint_id(url: str, origins: tuple[str, ...]) -> str | None:
    """The training's id when `url` is one of this server's checkpoint URLs."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    match = _CHECKPOINT_PATH.fullmatch(parts.path)
    if match and not parts.query and origin in {o.lower().rstrip("/") for o in origins}:
        return match.group(1)
    return None


class StoredTrainings(StoredRuns):
    """Turns claimed training rows into engine jobs and their ends into stored results; one per
    replica."""

    kind, lost_claim = TRAINING, LOST_CLAIM

    def __init__(
        self,
        store: Store,
        events: Events,
        replica: str,
        fetch: FetchSettings,
        work_dir,
        settings: TrainSettings | None = None,
    ):
        from sdxl.train.training import TrainSettings

        super().__init__(store, events, replica, writer="sdxl-training-store")
        self.fetch = fetch
        self.settings = settings or TrainSettings()  # the operator's, from the settings tree
        self.work_dir = Path(work_dir)  # one folder per training here, removed at its end
        # Checkpoints and ends go in order on the writer: a hand-back follows its checkpoint.
        self._earlier: dict[str, str] = {}  # a resumed training's logs from before
        self._jobs: dict[str, Job] = {}  # the trainings this replica runs, by id

    def job_for(self, row: dict) -> Job:
        job_id = row["id"]
        events = JobEvents(started=self._started, log=self._logged, finished=self._finished)
        work = ServerTraining(self, row)
        job = TrainingJob(job_id, work, events, tenant=row.get("tenant"))
        self._earlier[job_id] = row["logs"] or ""
        self._jobs[job_id] = job
        if row["cancel_requested"]:
            job.cancel()
        return job

    def checkpointed(self, training_id: str, path: Path, step: int) -> None:
        """On the GPU thread: queue the checkpoint's copy to the files backend, with the logs
        up to it (a replica that dies leaves both for the one that goes on)."""
        job = self._jobs.get(training_id)
        logs = None if job is None else self._logs(job)
        self._writes.submit(self._keep_checkpoint, training_id, path, step, logs)

    def _keep_checkpoint(self, training_id: str, path: Path, step: int, logs) -> None:
        try:
            self.store.trainings.keep_checkpoint(training_id, self.replica, step, path)
            if logs is not None:
                self.store.trainings.progress(training_id, self.replica, logs=logs, step=step)
        except Exception as err:  # the training goes on; the next checkpoint may be kept
            log.warning(
                "the checkpoint at step %d of %s was not stored: %s", step, training_id, err
            )

    # ---- the job's events ----------------------------------------------------------------
    def _logged(self, job: Job, line: str) -> None:
        if not self._log_due(job):
            return
        step = job.steps.get("train", 0)
        with contextlib.suppress(StoreUnavailable):
            self.store.trainings.progress(job.id, self.replica, logs=self._logs(job), step=step)
            self.events.changed(TRAINING, job.id, "logs")

    def _finished(self, job: Job) -> None:
        self._ended(job, self._store_end)

    def _store_end(self, job: Job) -> None:
        try:
            self._end(job)
        except Exception:
            log.exception("storing the end of training %s failed", job.id)
        finally:
            self._earlier.pop(job.id, None)
            self._jobs.pop(job.id, None)
            shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    def _logs(self, job: Job) -> str:
        """Its logs: a resumed training's earlier runs', then this run's."""
        return self._earlier.get(job.id, "") + log_text(job.logs)

    def origins(self, row: dict) -> tuple[str, ...]:
        """This server's origins as the training's creator saw them (and SDXL_PUBLIC_URL)."""
        return tuple(o for o in (self.events.public_url, row.get("origin")) if o)

    def _where_kept(self, training_id: str) -> str:
        """The log's last line for a training stopped early: where its checkpoint is."""
        row = self.rows.get(training_id)
        if row is None or not row["checkpoint_key"]:
            return ""
        url = (*self.origins(row), "")[0] + CHECKPOINT_PATH.format(training_id)
        return (
            f"the checkpoint of step {row['checkpoint_step']} is kept at {url} (GET it with "
            f"your API key); give that URL, or the file, as {RESUME} to go on from it\n"
        )

    def _end(self, job: Job) -> None:
        rows, ended = self.store.trainings, job.outcome
        logs, step = self._logs(job), job.steps.get("train", 0)
        if ended.kind == "stopping":  # the server stops: queued again, from its checkpoint
            rows.progress(job.id, self.replica, logs=logs, step=step)
            if rows.hand_back(job.id, self.replica):
                log.info("training %s handed back to the queue at step %d", job.id, step)
            return
        metrics = {"predict_time": job.run_seconds, "steps": step}
        weights = None
        if ended.succeeded:
            weights = job.result().weights
        message = None if ended.kind == "canceled" else ended.message
        if not ended.succeeded:
            logs += self._where_kept(job.id)
        row = rows.finish(
            job.id,
            StoredStatus(ended.status),
            replica=self.replica,
            error=message,
            logs=logs,
            metrics=metrics,
            weights=weights,
        )
        if row is None:  # not this replica's any more
            return
        if ended.succeeded:
            self.events.changed(TRAINING, job.id, "output")
        self.events.changed(TRAINING, job.id, "completed")

    def close(self, timeout: float = STORE_WAIT_S) -> None:
        """The server stops: the last checkpoints and hand-backs are written first."""
        self._drain_writes(timeout)
        self._writes.shutdown(wait=False, cancel_futures=True)


class ServerTraining:
    """A stored training's work for the engine (`sdxl.train.training.Training`'s interface):
    its files brought into its folder when it is prepared (an upload or data URI from the files
    backend, a URL fetched under the fetch rules, the last checkpoint to resume from)."""

    def __init__(self, owner: StoredTrainings, row: dict):
        self.owner = owner
        self.row = row
        self.inner = None  # the Training, once prepared

    def prepare(self, check) -> None:
        from sdxl.train.options import TrainRequest
        from sdxl.train.training import Training

        owner, row = self.owner, self.row
        folder = owner.work_dir / row["id"]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        values = dict(row["input"])
        kept = row.get("input_files") or {}
        for name in FILE_INPUTS:
            if name in kept:
                values[name] = str(_linked(owner.store.blobs.path(kept[name]), folder / name))
            elif name == RESUME and (source := self._own_checkpoint(values.get(name))):
                values[name] = str(_linked(source, folder / name))
            elif name in values:
                values[name] = str(self._fetched(values[name], folder / name, name, check))
        if row.get("checkpoint_key"):  # a replica stopped or died: go on from its checkpoint
            source = owner.store.blobs.path(row["checkpoint_key"])
            values["resume_from_checkpoint"] = str(_linked(source, folder / "resume.tar"))

        def keep(path: Path, step: int) -> None:
            owner.checkpointed(row["id"], path, step)

        request = TrainRequest(**values)
        self.inner = Training(request, folder, owner.settings, on_checkpoint=keep)
        self.inner.prepare(check)

    def _own_checkpoint(self, url: str | None) -> Path | None:
        """The kept checkpoint that `url` names when it is this server's URL of one of the
        owner's stopped trainings (None: not this server's checkpoint URL)."""
        source_id = None if url is None else own_checkpoint_id(url, self.owner.origins(self.row))
        if source_id is None:
            return None
        stopped = self.owner.store.trainings.get(source_id, self.row.get("tenant"))
        key = None if stopped is None else stopped["checkpoint_key"]
        if stopped is None or stopped["status"] not in ("canceled", "failed") or not key:
            raise InputError(
                f"{RESUME}: {redact(url)} is no checkpoint of yours on this server (the training "
                "was not yours, did not stop early, or its checkpoint was replaced by those of "
                "your later stopped trainings); give the downloaded file instead",
                RESUME,
            )
        return self.owner.store.blobs.path(key)

    def _fetched(self, url: str, target: Path, name: str, check) -> Path:
        def fail(why: str) -> Exception:
            return InputError(f"{name}: {redact(url)} could not be fetched: {why}", name)

        limits = http_get.Limits.of(self.owner.fetch, check)
        conn, response, _final = http_get.open_url(url, limits, fail)
        try:
            with open(target, "wb") as out:
                cap = self.owner.settings.archive.max_bytes
                http_get.stream(response, out, cap, limits, fail)
        finally:
            conn.close()
        return target

    def slices(self, models, job):
        return self.inner.slices(models, job)

    def finish(self):
        return self.inner.finish()

    def out_of_memory(self):
        return self.inner.out_of_memory()

    def steps_per_second(self) -> float | None:
        return None if self.inner is None else self.inner.steps_per_second()


def _linked(source: Path, target: Path) -> Path:
    """`source` under `target` without copying its bytes where the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target
