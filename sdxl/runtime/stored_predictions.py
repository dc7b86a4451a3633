"""Stored predictions on the engine: the job for a claimed row, and every change of its state
written back to the store (start, logs, the encoded outputs or the error).

A prediction created on this replica runs the Request its API checked (`adopt`); one recovered
from the store (a restart, another replica's) is made a Request again from its stored input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading

from sdxl.config import INPUTS, OUTPUT_INPUTS
from sdxl.engine import GenerationJob, Job, JobEvents
from sdxl.errors import UserError
from sdxl.images.outputs import encode_outputs
from sdxl.inputs.request import Request
from sdxl.runtime.events import Events
from sdxl.runtime.kinds import PREDICTION
from sdxl.runtime.stored_inputs import own_file_id, stored_request, with_own_files
from sdxl.runtime.stored_runs import StoredRuns, log_text
from sdxl.store.errors import StoreDiskFull, StoreUnavailable
from sdxl.store.store import Store
from sdxl.store.tables import ENDED, StoredStatus

log = logging.getLogger(__name__)

LOST_CLAIM = (
    "this replica was presumed dead and lost its claim on the prediction, which another "
    "replica settled"
)
STORAGE_FAILED = "storing the result failed ({}); create the prediction again"
DISK_FULL = "{}: the images were made but could not be kept; create the prediction again later"
STORE_RETRY_S = 0.5  # the first wait before storing a result again while the store is away
STORE_RETRY_MAX_S = 10.0  # the longest
RESULTS_GRACE_S = 20.0  # at a stop, how long results still being stored are waited for
FAILED = StoredStatus.FAILED


class StoredPredictions(StoredRuns):
    """Turns claimed rows into jobs (`job_for`, the shared queue's) and their ends into stored
    results; one per replica."""

    kind, lost_claim = PREDICTION, LOST_CLAIM

    def __init__(
        self,
        store: Store,
        events: Events,
        replica: str,
        public_url: str | None,
        served: frozenset[str] = frozenset(),
    ):
        super().__init__(store, events, replica, writer="sdxl-outputs")
        self.served = served  # the served models (owner/name); others are trained versions
        self.public_url = public_url
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # The Requests checked by this replica's API for predictions it stored and nobody has
        # claimed yet: by id, until claimed here or ended anywhere.
        self._checked: dict[str, Request] = {}

    def adopt(self, row: dict, request: Request) -> None:
        """`request` (checked at the boundary) is what runs when `row` is claimed here."""
        request = with_own_files(request, self._origins(row), self._file_reader(row))
        with self._lock:
            self._checked[row["id"]] = request

    def forget(self, prediction_id: str) -> None:
        """It ended (here or on another replica), or was never stored: its checked Request is
        no longer needed. "" (the store's wake-ups reconnected, ends may have been missed):
        those that another replica claimed or that ended go."""
        if prediction_id:
            with self._lock:
                self._checked.pop(prediction_id, None)
            return
        self.prune()

    def prune(self) -> None:
        """Drop the checked Requests of predictions no longer waiting for this replica: ended,
        gone, or claimed by another (at a reconnect of the wake-ups, and every expiry round)."""
        with self._lock:
            waiting = list(self._checked)
        for prediction_id in waiting:
            try:
                row = self.store.predictions.get(prediction_id)
            except StoreUnavailable:
                return  # the next round
            if row is None or row["status"] in ENDED or row["claimed_by"] is not None:
                with self._lock:
                    self._checked.pop(prediction_id, None)

    def _origins(self, row: dict) -> tuple[str, ...]:
        return tuple(o for o in (row.get("origin"), self.public_url) if o)

    def _file_reader(self, row: dict):
        tenant = row.get("tenant")

        def file_bytes(file_id: str) -> bytes | None:  # only the creator's own uploads
            return self.store.files.data(file_id, tenant)

        return file_bytes

    def _request(self, row: dict) -> Request:
        """The checked Request if this replica's API made it, else the stored input's."""
        # Store reads first: the checked Request stays till then.
        upload = self._uploaded_weights(row)
        trained_tar = upload or self._trained_tar(row)
        with self._lock:
            checked = self._checked.pop(row["id"], None)
        if checked is None:
            origins, reader = self._origins(row), self._file_reader(row)
            request = stored_request(row["input"], origins, reader, trained_tar)
        else:
            request = checked if trained_tar is None else _with_tar(checked, trained_tar)
        return request if upload is None else dataclasses.replace(request, replicate_weights=None)

    def _uploaded_weights(self, row: dict) -> str | None:
        """Where `replicate_weights` is when it names one of the creator's uploads (/v1/files):
        the upload in this server's files, read there, never fetched over HTTP. It replaces a
        trained version's weights, as any replicate_weights does."""
        url = row["input"].get("replicate_weights")
        file_id = own_file_id(url, self._origins(row)) if isinstance(url, str) else None
        if file_id is None:
            return None
        found = self.store.files.get(file_id, row.get("tenant"))
        if found is None:  # expired, deleted or another key's: a path that is never a file
            return str(self.store.blobs.root / "gone" / file_id)
        return str(self.store.blobs.path(found["key"]))

    def job_for(self, row: dict) -> Job:
        given, tenant = row["input"], row.get("tenant")
        request = self._request(row)
        output = tuple(given.get(n, INPUTS[n].default) for n in OUTPUT_INPUTS)

        def finished(job: Job) -> None:
            self._ended(job, self._store_result, *output)

        events = JobEvents(
            started=self._started, log=self._logged, preview=self._preview, finished=finished
        )
        # No previews until someone reads them (JobRuntime.want_previews).
        job = GenerationJob(row["id"], request, events, tenant=tenant)
        if row["cancel_requested"]:
            job.cancel()
        return job

    def _trained_tar(self, row: dict) -> str | None:
        """The trained_model.tar of a trained version's prediction (None: the served model's);
        a version that is gone fails the prediction when it is prepared."""
        if row["model"] in self.served:
            return None
        found = self.store.destinations.find_version(f"{row['model']}:{row['version']}")
        key = found["weights_key"] if found else f"versions/{row['version']}/trained_model.tar"
        return str(self.store.blobs.path(key))

    def _preview(self, job: Job, preview) -> None:
        with contextlib.suppress(StoreUnavailable):  # the next one, or the result, will do
            self.store.predictions.set_preview(
                job.id, preview.stage, preview.step, preview.total, preview.jpeg
            )

    def _logged(self, job: Job, line: str) -> None:
        if not self._log_due(job):
            return
        try:
            self.store.predictions.update(job.id, logs=log_text(job.logs))
        except StoreUnavailable:  # the store is away: the logs go with the result
            return
        self.events.changed(PREDICTION, job.id, "logs")

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
        if status == StoredStatus.SUCCEEDED:
            self.events.changed(PREDICTION, job.id, "output")
        self.events.changed(PREDICTION, job.id, "completed")

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
                    logs=log_text(job.logs),
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
        self._drain_writes(timeout)
        self._stopping.set()
        self._writes.shutdown(wait=True)

    def _result(self, job: Job, fmt: str, quality: int):
        metrics = {} if job.run_seconds is None else {"predict_time": job.run_seconds}
        ended = job.outcome  # sdxl.engine.outcome: the same status and message as every API
        if not ended.succeeded:
            message = None if ended.kind == "canceled" else ended.message
            return StoredStatus(ended.status), message, [], metrics
        result = job.result()
        try:
            outputs = encode_outputs(result, fmt, quality, flagged="drop")
        except UserError as err:  # every image flagged
            return StoredStatus.FAILED, str(err), [], metrics
        images = [(o.name, o.mime, o.data) for o in outputs]
        metrics.update(seeds=[o.seed for o in outputs if not o.control_map], mode=result.mode)
        metrics["refine"] = job.request.refine
        return StoredStatus.SUCCEEDED, None, images, metrics


def _with_tar(request: Request, trained_tar: str) -> Request:
    return dataclasses.replace(request, trained_tar=trained_tar)
