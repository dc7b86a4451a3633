"""Stored predictions on the engine: the job for a claimed row, and every change of its state
written back to the store (start, logs, the encoded outputs or the error)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sdxl.config import INPUTS, OUTPUT_INPUTS
from sdxl.engine import Job, JobEvents
from sdxl.errors import UserError
from sdxl.http.replicate.events import Events
from sdxl.http.replicate.inputs import stored_request
from sdxl.http.settings import PREVIEW_EVERY
from sdxl.images.outputs import encode_outputs
from sdxl.store.errors import StoreDiskFull, StoreUnavailable
from sdxl.store.store import Store
from sdxl.store.tables import PredictionStatus

log = logging.getLogger(__name__)

LOG_FLUSH_S = 0.5  # logs are written to the store (and sent to webhooks) at most this often
LOST_CLAIM = (
    "this replica was presumed dead and lost its claim on the prediction, which another "
    "replica settled"
)
STORAGE_FAILED = "storing the result failed ({}); create the prediction again"
DISK_FULL = "{}: the images were made but could not be kept; create the prediction again later"
STORE_RETRY_S = 0.5  # the first wait before storing a result again while the store is away
STORE_RETRY_MAX_S = 10.0  # the longest
RESULTS_GRACE_S = 20.0  # at a stop, how long results still being stored are waited for
FAILED = PredictionStatus.FAILED


class StoredRuns:
    """Turns claimed rows into jobs (`job_for`, the shared queue's) and their ends into stored
    results; one per replica."""

    def __init__(
        self,
        store: Store,
        events: Events,
        replica: str,
        public_url: str | None,
        served: frozenset[str] = frozenset(),
    ):
        self.store = store
        self.served = served  # the served models (owner/name); others are trained versions
        self.events = events
        self.replica = replica
        self.public_url = public_url
        self._outputs = ThreadPoolExecutor(1, thread_name_prefix="sdxl-outputs")
        self._stopping = threading.Event()
        self._flushed: dict[str, float] = {}

    def job_for(self, row: dict) -> Job:
        origins = tuple(o for o in (row.get("origin"), self.public_url) if o)
        given = row["input"]
        tenant = row.get("tenant")

        def file_bytes(file_id: str) -> bytes | None:  # only the creator's own uploads
            return self.store.files.data(file_id, tenant)

        request = stored_request(given, origins, file_bytes, self._trained_tar(row))
        output = tuple(given.get(n, INPUTS[n].default) for n in OUTPUT_INPUTS)

        def finished(job: Job) -> None:
            self._flushed.pop(job.id, None)
            self._outputs.submit(self._store_result, job, *output)  # off the GPU thread

        events = JobEvents(
            started=self._started, log=self._logged, preview=self._preview, finished=finished
        )
        job = Job(row["id"], request, events, preview_every=PREVIEW_EVERY, tenant=tenant)
        if row["cancel_requested"]:
            job.cancel("the prediction was cancelled")
        return job

    def _trained_tar(self, row: dict) -> str | None:
        """The trained_model.tar of a trained version's prediction (None: the served model's);
        a version that is gone fails the prediction when it is prepared."""
        if row["model"] in self.served:
            return None
        found = self.store.destinations.find_version(f"{row['model']}:{row['version']}")
        key = found["weights_key"] if found else f"versions/{row['version']}/trained_model.tar"
        return str(self.store.blobs.path(key))

    def _started(self, job: Job) -> None:
        try:
            if not self.store.predictions.started(job.id, self.replica):
                job.cancel(LOST_CLAIM)
                return
        except StoreUnavailable:  # it runs; its start is written with its end
            return
        self.events.changed(job.id, "start")

    def _preview(self, job: Job, preview) -> None:
        with contextlib.suppress(StoreUnavailable):  # the next one, or the result, will do
            self.store.predictions.set_preview(
                job.id, preview.stage, preview.step, preview.total, preview.jpeg
            )

    def _logged(self, job: Job, line: str) -> None:
        now = time.monotonic()
        if now - self._flushed.get(job.id, 0.0) >= LOG_FLUSH_S:
            self._flushed[job.id] = now
            try:
                self.store.predictions.update(job.id, logs=_text(job.logs))
            except StoreUnavailable:  # the store is away: the logs go with the result
                return
            self.events.changed(job.id, "logs")

    def _store_result(self, job: Job, fmt: str, quality: int) -> None:
        if job.outcome.kind == "stopping":
            return  # handed back (Engine.drain): it stays queued in the store
        try:
            status, error, images, metrics = self._result(job, fmt, quality)
        except Exception as err:  # never leave a prediction running forever
            log.exception("encoding the result of prediction %s failed", job.id)
            status, error = FAILED, STORAGE_FAILED.format(type(err).__name__)
            images, metrics = [], None
        kept = self._finish(job, status, error, images, metrics)
        if not kept:  # cancelled while queued, or settled by another replica: theirs stands
            return
        if status == PredictionStatus.SUCCEEDED:
            self.events.changed(job.id, "output")
        self.events.changed(job.id, "completed")

    def _finish(self, job: Job, status, error, images, metrics) -> bool:
        """Store the end of `job`. While the store cannot be reached the result is kept here and
        stored once it is back; a full disk fails the prediction saying so. False: the row
        was not this replica's to end, or the server stopped before the store came back."""
        wait = STORE_RETRY_S
        while True:
            try:
                return self.store.predictions.finish(
                    job.id,
                    status,
                    error=error,
                    metrics=metrics,
                    logs=_text(job.logs),
                    images=images,
                    replica=self.replica,
                    started_at=job.started_at,
                )
            except StoreDiskFull as err:
                if images:  # what is kept must fit: the failure, without the images
                    status, error, images = FAILED, DISK_FULL.format(err.message), []
                    continue
            except StoreUnavailable:
                pass
            except Exception as err:
                if status == FAILED and not images:
                    log.exception("storing the end of prediction %s failed", job.id)
                    return False
                log.exception("storing the result of prediction %s failed", job.id)
                status, error, images = FAILED, STORAGE_FAILED.format(type(err).__name__), []
                continue
            if self._stopping.wait(wait):
                log.warning("prediction %s ended while the store was away: not stored", job.id)
                return False
            wait = min(2 * wait, STORE_RETRY_MAX_S)

    def close(self, timeout: float = RESULTS_GRACE_S) -> None:
        """The server stops: results being stored get `timeout` seconds, then are given up
        (the next start or another replica settles their predictions)."""
        done = self._outputs.submit(lambda: None)  # behind every result queued before it
        with contextlib.suppress(TimeoutError):
            done.result(timeout)
        self._stopping.set()
        self._outputs.shutdown(wait=True)

    def _result(self, job: Job, fmt: str, quality: int):
        metrics = {} if job.run_seconds is None else {"predict_time": job.run_seconds}
        ended = job.outcome  # sdxl.engine.outcome: the same status and message as every API
        if not ended.succeeded:
            message = None if ended.kind == "canceled" else ended.message
            return PredictionStatus(ended.status), message, [], metrics
        result = job.result()
        try:
            outputs = encode_outputs(result, fmt, quality, flagged="drop")
        except UserError as err:  # every image flagged
            return PredictionStatus.FAILED, str(err), [], metrics
        images = [(o.name, o.mime, o.data) for o in outputs]
        metrics.update(seeds=[o.seed for o in outputs], mode=result.mode)
        metrics["refine"] = job.request.refine
        return PredictionStatus.SUCCEEDED, None, images, metrics


def _text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
