"""`POST /v1/images/stable-diffusion-xl/generate`: a synchronous job on the shared engine.

At most SDXL_QUEUE_SIZE of this endpoint's requests wait for the GPU (429 beyond that); a
client that hangs up cancels its job, queued or running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading

from fastapi import APIRouter, Response
from fastapi import Request as HttpRequest

from sdxl.api.datacrunch.errors import InvalidInput, body_error, engine_error
from sdxl.api.datacrunch.fields import DATACRUNCH
from sdxl.api.datacrunch.schema import ErrorBody, GenerateResponse, ValidationErrorBody
from sdxl.api.errors import (
    ClientDisconnected,
    GenerationFailed,
    GenerationTimeout,
    QueueFull,
    Unavailable,
    retry_after,
)
from sdxl.api.service import ServerStatus, Service
from sdxl.api.settings import DRAINING_RETRY_AFTER_S, LOADING_RETRY_AFTER_S, Settings
from sdxl.core.image_output import encode_outputs
from sdxl.core.request import Request
from sdxl.core.result import Result
from sdxl.core.rules import check_fields
from sdxl.core.surface import Checked, InvalidInputs
from sdxl.engine import DeadlineExceeded, EngineBroken, Job, JobCanceled, JobEvents
from sdxl.errors import UserError

log = logging.getLogger(__name__)

GENERATE_PATH = "/v1/images/stable-diffusion-xl/generate"
FIRST_GUESS_S = 10.0  # Retry-After before any job has been timed

ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    413: {"model": ErrorBody, "description": "Body over the limit (SDXL_MAX_BODY_BYTES)."},
    422: {"model": ValidationErrorBody, "description": "A parameter is invalid; see detail."},
    429: {"model": ErrorBody, "description": "The queue is full; retry after Retry-After s."},
    503: {"model": ErrorBody, "description": "Model still loading, or shutting down."},
    504: {"model": ErrorBody, "description": "The job ran past SDXL_MAX_SECONDS."},
}


class Waiting:
    """This endpoint's requests that wait for the GPU, bounded by SDXL_QUEUE_SIZE."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._waiting = 0
        self._mean_s: float | None = None

    def submit(self, service: Service, request: Request) -> Job:
        with self._lock:
            if self._waiting >= self.capacity + (0 if service.engine.counts()["running"] else 1):
                mean = FIRST_GUESS_S if self._mean_s is None else self._mean_s
                raise QueueFull(
                    f"{self._waiting} requests are already waiting, the most this server "
                    "queues (SDXL_QUEUE_SIZE); retry after the Retry-After seconds",
                    headers=retry_after(mean * max(1, self._waiting - self.capacity + 1)),
                )
            self._waiting += 1
        left = threading.Event()  # the job stopped waiting: it started, or it ended

        def stop_waiting(job: Job) -> None:
            with self._lock:
                if not left.is_set():
                    left.set()
                    self._waiting -= 1

        def finished(job: Job) -> None:
            stop_waiting(job)
            if job.run_seconds is not None and job.error is None:
                with self._lock:
                    old = self._mean_s if self._mean_s is not None else job.run_seconds
                    self._mean_s = 0.7 * old + 0.3 * job.run_seconds

        events = JobEvents(started=stop_waiting, finished=finished)
        return service.engine.submit(request, events=events)


def check_accepting(service: Service) -> None:
    status = service.status
    if status == ServerStatus.READY:
        return
    if status == ServerStatus.LOADING:
        raise Unavailable(
            "the model is still loading; retry in a few seconds (GET /health says when it "
            "is ready)",
            headers=retry_after(LOADING_RETRY_AFTER_S),
        )
    if status == ServerStatus.FAILED:
        raise Unavailable(f"the model is not available ({service.reason}); see the server log")
    raise Unavailable(
        "the server is shutting down and takes no new requests; send the request again",
        headers={**retry_after(DRAINING_RETRY_AFTER_S), "Connection": "close"},
    )


async def _until_disconnected(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def result_unless_disconnected(http: HttpRequest, job: Job) -> Result:
    """The job's result; if the client hangs up first, the job is cancelled (queued or
    running) and ClientDisconnected raised."""
    done = asyncio.wrap_future(job.future)
    watcher = asyncio.ensure_future(_until_disconnected(http))
    try:
        finished, _ = await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel("the client went away")
        raise
    finally:
        watcher.cancel()
    if done not in finished:
        job.cancel("the client disconnected before its images were ready")
        log.info(
            "a client disconnected before its images were ready; its job %s was cancelled", job.id
        )
        raise ClientDisconnected("the client disconnected before its images were ready")
    return _result_or_error(job, done)


def _result_or_error(job: Job, done: asyncio.Future) -> Result:
    try:
        return done.result()
    except UserError as err:  # a rule of the model, or out of memory: the request's size
        raise engine_error(err) from err
    except JobCanceled as err:
        raise ClientDisconnected(str(err)) from err
    except DeadlineExceeded as err:
        raise GenerationTimeout(str(err)) from err
    except EngineBroken as err:
        raise Unavailable(str(err)) from err
    except Exception as err:
        log.error("job %s failed: %s: %s", job.id, type(err).__name__, err)
        raise GenerationFailed(
            f"generation failed ({type(err).__name__}, request {job.id}); the server is still "
            "running: retry, or change the parameters"
        ) from err


def encoded(result: Result, checked: Checked) -> list[str]:
    """Each image encoded with its parameters (flagged ones black), base64."""
    fmt, quality = checked.output("output_format"), checked.output("output_quality")
    outputs = encode_outputs(result, fmt, quality, flagged="black")
    return [base64.b64encode(o.data).decode("ascii") for o in outputs]


async def checked_body(http: HttpRequest, settings: Settings, service: Service) -> Checked:
    try:
        body = json.loads(await http.body() or b"null")
    except ValueError as err:
        raise body_error(f"the body is not valid JSON ({err})") from None
    if body is None:
        raise body_error("the request has no body")
    if not isinstance(body, dict):
        raise body_error("the body must be a JSON object of generation parameters")
    try:
        return check_fields(body, DATACRUNCH, service.engine.settings.caps)
    except InvalidInputs as err:
        raise InvalidInput(err.problems) from None


def router(service: Service, settings: Settings) -> APIRouter:
    routes = APIRouter()
    waiting = Waiting(settings.queue_size)

    body_doc = {"$ref": "#/components/schemas/GenerateRequest"}
    openapi_extra = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_doc}}}
    }

    @routes.post(
        GENERATE_PATH,
        response_model=GenerateResponse,
        responses=ERRORS,
        summary="Generate images from a prompt (and optionally a seed image)",
        openapi_extra=openapi_extra,
    )
    async def generate(http: HttpRequest, response: Response) -> GenerateResponse:
        checked = await checked_body(http, settings, service)
        check_accepting(service)
        job = waiting.submit(service, checked.request())
        result = await result_unless_disconnected(http, job)
        images = await asyncio.to_thread(encoded, result, checked)
        response.headers["X-Request-Id"] = job.id
        return GenerateResponse(
            images=images,
            seeds=result.seeds,
            nsfw_content_detected=list(result.nsfw),
            output_format=checked.given.get("output_format", "png"),
        )

    return routes
