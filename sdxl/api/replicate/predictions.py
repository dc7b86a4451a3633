"""Predictions as Replicate has them: stored when created, run by the engine, every change of
state written back to the store, rendered as Replicate's prediction object, sent to webhooks."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sdxl.api.replicate.inputs import Invalid, Sources, normalize, request_for
from sdxl.api.replicate.models import Catalogue, Version
from sdxl.api.replicate.queue import SharedQueue
from sdxl.api.replicate.replicas import Replicas
from sdxl.api.replicate.store import ENDED, Store, new_id
from sdxl.api.replicate.webhooks import EVENTS, Webhooks, new_secret
from sdxl.api.settings import Settings
from sdxl.config import Caps, cog_input_kinds
from sdxl.core.encode import FORMATS, encode_images
from sdxl.core.result import filter_flagged
from sdxl.engine import DeadlineExceeded, EngineBroken, Job, JobCanceled, JobEvents
from sdxl.errors import InputError
from sdxl.trained.fetch import FetchSettings

log = logging.getLogger(__name__)

LOG_FLUSH_S = 0.5  # logs are written to the store (and sent to webhooks) at most this often
CANCEL_POLL_S = 0.25  # how often a replica of a shared store looks for cancels of its jobs
LOST_CLAIM = (
    "this replica was presumed dead and lost its claim on the prediction, which another "
    "replica settled"
)
RESTART_MESSAGE = (
    "the server stopped while this prediction was running (it was restarted or it crashed); "
    "create the prediction again"
)


class InputInvalid(Exception):
    def __init__(self, problems: list[Invalid]):
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Predictions:
    def __init__(self, store: Store, settings: Settings, caps: Caps):
        self.store = store
        self.settings = settings
        self.caps = caps
        self.catalogue = Catalogue(settings.models, caps)
        self.kinds = cog_input_kinds(self.catalogue.schema)
        host = socket.gethostname()[:40]  # the pod's name on Kubernetes
        self.replica = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.queue = SharedQueue(store, self.replica, self._job_for)
        self.replicas = (
            Replicas(store, self.replica, settings.replica_timeout_s) if store.shared else None
        )
        secret = settings.webhook_secret or store.setting("webhook_secret", new_secret)
        self.webhooks = Webhooks(secret, public_only=FetchSettings.from_env().public_only)
        self._outputs = ThreadPoolExecutor(1, thread_name_prefix="sdxl-outputs")
        self._changed = threading.Condition()

    def recover(self) -> None:
        """At start. The only replica of its store (SQLite): the predictions it was running
        failed, the ones it had claimed are queued again. A replica of a shared store beats
        before it claims anything; the others settle the predictions of dead replicas."""
        if self.replicas is not None:
            self.replicas.beat()
            log.info("replica %s of a shared prediction store", self.replica)
        else:
            failed, requeued = self.store.recover(RESTART_MESSAGE)
            if failed or requeued:
                log.info("after the restart: %d failed, %d queued again", failed, requeued)
        removed = self.store.expire()
        if removed:
            log.info("removed %d expired predictions and files", removed)

    def start_housekeeping(self, every_s: float = 60.0) -> None:
        """Expire old predictions and files now and then, on a thread of its own."""

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    self.store.expire()
                except Exception:
                    log.exception("expiring old predictions failed")

        threading.Thread(target=loop, name="sdxl-expire", daemon=True).start()
        if self.replicas is not None:
            threading.Thread(target=self._replica_loop, name="sdxl-replica", daemon=True).start()

    def _replica_loop(self) -> None:
        """Heartbeats, the other replicas watched, and cancels made on other replicas."""
        next_beat = 0.0
        while True:
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.replicas.beat_every_s
                    self.replicas.beat()
                    self.replicas.reap()
                self._cancels_from_elsewhere()
            except Exception as err:  # the database is away: try again at the next round
                log.warning("the shared prediction store cannot be reached: %s", err)
                time.sleep(self.replicas.beat_every_s)
            time.sleep(CANCEL_POLL_S)

    def _cancels_from_elsewhere(self) -> None:
        for prediction_id in self.store.cancels_requested(self.queue.local_ids()):
            job = self.queue.local(prediction_id)
            if job is not None:
                job.cancel("the prediction was cancelled")

    def stop(self) -> None:
        """After the drain: this replica holds no claim, so it leaves the replicas' table."""
        if self.replicas is not None:
            try:
                self.replicas.leave()
            except Exception as err:
                log.warning("leaving the shared prediction store failed: %s", err)

    # ---- the API's calls ----------------------------------------------------------------
    def create(self, version: Version, body: dict, origin: str) -> dict:
        values, problems = normalize(body.get("input"), self.kinds, self.caps)
        webhook = body.get("webhook")
        wanted = body.get("webhook_events_filter")
        if webhook is not None and not (
            isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
        ):
            problems.append(Invalid("webhook", "must be an http(s) URL"))
        if wanted is not None and not (
            isinstance(wanted, list) and all(event in EVENTS for event in wanted)
        ):
            problems.append(Invalid("webhook_events_filter", f"must list some of {EVENTS}"))
        if problems:
            raise InputInvalid(problems)
        row = self.store.create(
            {
                "id": new_id(),
                "model": version.model,
                "version": version.id,
                "input": values,
                "webhook": webhook,
                "webhook_events_filter": wanted,
                "origin": origin,
            }
        )
        self.queue.created()
        if self.store.count() > self.store.limits.max_predictions:
            self.store.expire()  # over the count bound: the oldest ended ones go now
        return row

    def cancel(self, prediction_id: str) -> None:
        if self.store.request_cancel(prediction_id):  # it was still queued
            self._changed_now()
            self._send(prediction_id, "completed")
            return
        job = self.queue.local(prediction_id)
        if job is not None:
            job.cancel("the prediction was cancelled")
        # claimed by another replica: it sees cancel_requested at its next poll

    def wait(self, prediction_id: str, seconds: float) -> dict | None:
        """The prediction once it has ended, or as it is after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            row = self.store.get(prediction_id)
            left = deadline - time.monotonic()
            if row is None or row["status"] in ENDED or left <= 0:
                return row
            with self._changed:
                self._changed.wait(min(left, 0.25))

    # ---- the engine's side --------------------------------------------------------------
    def _job_for(self, row: dict) -> Job:
        origins = tuple(o for o in (row.get("origin"), self.settings.public_url) if o)
        sources = Sources(origins, self._file_bytes, FetchSettings.from_env())
        values = row["input"]
        fetches = bool(values.get("replicate_weights")) or any(
            str(values.get(name, "")).startswith(("http://", "https://"))
            for name in ("image", "mask")
        )
        job = Job(
            row["id"],
            None,
            JobEvents(started=self._started, log=self._logged, finished=self._finished),
            build=lambda job: request_for(values, sources, job.check),
            downloads=fetches,
        )
        job.last_flush = 0.0
        if row["cancel_requested"]:
            job.cancel("the prediction was cancelled")
        return job

    def _file_bytes(self, file_id: str) -> bytes | None:
        row = self.store.get_file(file_id, with_data=True)
        return None if row is None else row["data"]

    def _started(self, job: Job) -> None:
        if not self.store.started(job.id, self.replica):
            job.cancel(LOST_CLAIM)
            return
        self._changed_now()
        self._send(job.id, "start")

    def _logged(self, job: Job, line: str) -> None:
        now = time.monotonic()
        if now - job.last_flush >= LOG_FLUSH_S:
            job.last_flush = now
            self.store.update(job.id, logs=_text(job.logs))
            self._changed_now()
            self._send(job.id, "logs")

    def _finished(self, job: Job) -> None:
        self._outputs.submit(self._store_result, job)  # encoding stays off the GPU thread

    def _store_result(self, job: Job) -> None:
        status = "failed"
        try:
            status, error, images, metrics = self._result(job)
            kept = self.store.finish(
                job.id,
                status,
                error=error,
                metrics=metrics,
                logs=_text(job.logs),
                images=images,
                replica=self.replica,
            )
        except Exception as err:  # never leave a prediction running forever
            log.exception("storing the result of prediction %s failed", job.id)
            status = "failed"
            error = f"storing the result failed ({err})"
            kept = self.store.finish(job.id, status, error=error, replica=self.replica)
        finally:
            self.queue.release(job.id)
        if not kept:  # cancelled while queued, or settled by another replica: theirs stands
            return
        self._changed_now()
        if status == "succeeded":
            self._send(job.id, "output")
        self._send(job.id, "completed")

    def _result(self, job: Job):
        metrics = {} if job.run_seconds is None else {"predict_time": job.run_seconds}
        error = job.error
        if isinstance(error, JobCanceled):
            return "canceled", None, [], metrics
        if error is not None:
            return "failed", failure_message(job.id, error), [], metrics
        result = job.result()
        try:
            images, kept = filter_flagged(result.images, result.nsfw)
        except InputError as err:
            return "failed", str(err), [], metrics
        seeds = [result.seeds[i] for i in kept]
        req = job.request
        fmt = FORMATS[req.output_format]
        metadata = [result.metadata(k) for k in kept]
        data = encode_images(images, req.output_format, req.output_quality, metadata)
        encoded = [(f"out-{i}{fmt.extension}", fmt.mime, d) for i, d in enumerate(data)]
        metrics.update(seeds=seeds, mode=result.mode, refine=req.refine)
        return "succeeded", None, encoded, metrics

    # ---- notifications ------------------------------------------------------------------
    def _changed_now(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _send(self, prediction_id: str, event: str) -> None:
        row = self.store.get(prediction_id)
        if row is None or not row["webhook"]:
            return
        base = self.settings.public_url or row.get("origin") or ""
        self.webhooks.send(
            prediction_id,
            row["webhook"],
            event,
            row["webhook_events_filter"],
            lambda: self.render(self.store.get(prediction_id), base),
        )

    def render(self, row: dict, base: str, status: str | None = None) -> dict:
        """Replicate's prediction object; `status` overrides the stored one (a wait that ran
        out answers "starting", as Replicate does, so that the clients go on polling)."""
        output = None
        if row["status"] == "succeeded":
            output = [self._output_uri(o, base) for o in self.store.outputs_of(row["id"])]
        return {
            "id": row["id"],
            "model": row["model"],
            "version": row["version"],
            "input": row["input"],
            "output": output,
            "logs": row["logs"],
            "error": row["error"],
            "status": status or row["status"],
            "created_at": iso(row["created_at"]),
            "started_at": iso(row["started_at"]),
            "completed_at": iso(row["completed_at"]),
            "urls": {
                "get": f"{base}/v1/predictions/{row['id']}",
                "cancel": f"{base}/v1/predictions/{row['id']}/cancel",
            },
            "metrics": row["metrics"] or {},
            "source": "api",
            "data_removed": False,
        }

    def _output_uri(self, output: dict, base: str) -> str:
        if self.settings.public_url:
            return f"{self.settings.public_url}/outputs/{output['token']}/{output['name']}"
        payload = base64.b64encode(output["data"]).decode("ascii")
        return f"data:{output['content_type']};base64,{payload}"


def failure_message(job_id: str, error: BaseException) -> str:
    if isinstance(error, InputError | EngineBroken | DeadlineExceeded):
        return str(error)
    log.error("prediction %s failed: %s: %s", job_id, type(error).__name__, error)
    return f"generation failed ({type(error).__name__}); retry, or change the inputs"


def _text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
