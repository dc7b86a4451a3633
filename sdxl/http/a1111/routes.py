"""AUTOMATIC1111's API (`/sdapi/v1/...`), answered as A1111 1.10 answers, so that the tools
built for it (Open WebUI's and LibreChat's Automatic1111 engines, SillyTavern, webuiapi, bots)
can use this server: txt2img and img2img, progress with a preview of the caller's running job,
interrupt and skip of the caller's jobs, and the lists and options those tools read at start.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import secrets
import time
from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse
from PIL import Image

from sdxl.config import MAX_SEED, STYLES
from sdxl.engine import Job, JobCanceled
from sdxl.errors import InputError
from sdxl.http.a1111.fields import (
    IMG2IMG,
    SAMPLER_ALIASES,
    SAMPLERS,
    SCHEDULES,
    TXT2IMG,
    sampler_of,
)
from sdxl.http.a1111.info import Made, info_json, job_timestamp
from sdxl.http.a1111.options import OptionsApi
from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.schemas import body_doc
from sdxl.http.settings import Settings
from sdxl.http.sync import SyncJobs, outcome, until_done
from sdxl.images.outputs import encode_outputs
from sdxl.inputs.rules import check_cap, check_fields
from sdxl.inputs.surface import UNSET, Checked, InvalidInputs, Surface

EXAMPLE = '{"prompt": "a cat", "steps": 20}'
PREVIEW_EVERY = 5  # steps between the previews /progress shows (A1111's live previews)
INTERRUPTED = "interrupted (POST /sdapi/v1/interrupt)"
SKIPPED = "skipped (POST /sdapi/v1/skip)"


@dataclass
class Run:
    """One caller's txt2img or img2img request in flight: what /progress reports."""

    jobs: list[Job]
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=job_timestamp)
    interrupted: bool = False
    skipped: bool = False


def router(sync: SyncJobs, settings: Settings) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1")
    caps = sync.service.engine.settings.caps
    runs: dict[str, Run] = {}

    async def generate(http: HttpRequest, shape: Surface, img2img: bool) -> dict:
        found = checked(await json_object(http, EXAMPLE, empty="{}"), shape, caps)
        n_iter = found.given.get("n_iter", 1)
        first = found.request()
        seed = first.seed if first.seed is not None else secrets.randbelow(MAX_SEED + 1)
        batch = first.num_outputs
        requests = [dataclasses.replace(first, seed=seed + k * batch) for k in range(n_iter)]
        caller = caller_of(http)
        jobs = sync.submit(requests, caller, preview_every=PREVIEW_EVERY)
        run = runs[caller] = Run(jobs)
        try:
            await until_done(http, jobs)
        finally:
            if runs.get(caller) is run:
                del runs[caller]
        return await asyncio.to_thread(answer, found, shape, img2img, jobs, run)

    def answer(found: Checked, shape, img2img: bool, jobs: list[Job], run: Run) -> dict:
        images, seeds, nsfw = [], [], []
        for job in jobs:
            if isinstance(job.error, JobCanceled):  # interrupted or skipped: A1111 answers
                continue  # with the images it has
            result = outcome(job, shape)
            for output in encode_outputs(result, "png", 100, flagged="black"):
                images.append(base64.b64encode(output.data).decode("ascii"))
            seeds += result.seeds
            nsfw += result.nsfw
        request = jobs[0].request
        name = found.given.get("sampler_name") or found.given.get("sampler_index", "Euler")
        _, sampler, schedule = sampler_of(name, found.given.get("scheduler", "automatic"))
        width, height = (request.width, request.height)
        if jobs[0].generation is not None:
            width, height = jobs[0].generation.width, jobs[0].generation.height
        made = Made(
            request=jobs[0].generation.request if jobs[0].generation else request,
            seeds=seeds,
            sampler=sampler,
            schedule=schedule,
            width=width,
            height=height,
            denoising_strength=request.prompt_strength if img2img else None,
            model=settings.model_name,
            timestamp=run.timestamp,
        )
        send = found.given.get("send_images", True)
        return {
            "images": images if send else [],
            "parameters": parameters(found, shape),
            "info": info_json(made, nsfw),
        }

    @routes.post(
        "/txt2img",
        summary="AUTOMATIC1111's text to image",
        openapi_extra=body_doc("Txt2ImgRequest"),
    )
    async def txt2img(http: HttpRequest) -> dict:
        return await generate(http, TXT2IMG, img2img=False)

    @routes.post(
        "/img2img",
        summary="AUTOMATIC1111's image to image and inpainting",
        openapi_extra=body_doc("Img2ImgRequest"),
    )
    async def img2img(http: HttpRequest) -> dict:
        return await generate(http, IMG2IMG, img2img=True)

    @routes.get("/progress", summary="The caller's running request, with a preview")
    def progress(http: HttpRequest, skip_current_image: bool = False) -> dict:
        return progress_of(runs.get(caller_of(http)), skip_current_image)

    @routes.post("/interrupt", summary="Stop the caller's running request")
    def interrupt(http: HttpRequest) -> dict:
        caller = caller_of(http)
        if caller in runs:
            runs[caller].interrupted = True
        for job in sync.of_caller(caller):
            job.cancel(INTERRUPTED)
        return {}

    @routes.post("/skip", summary="Skip the caller's running batch; the next one runs")
    def skip(http: HttpRequest) -> JSONResponse:
        caller = caller_of(http)
        run = runs.get(caller)
        running = [job for job in (run.jobs if run else []) if not job.done()]
        if running:
            run.skipped = True
            running[0].cancel(SKIPPED)
        return JSONResponse(None)

    @routes.get("/samplers")
    def samplers() -> list[dict]:
        return [
            {"name": name, "aliases": SAMPLER_ALIASES[name], "options": {}} for name in SAMPLERS
        ]

    @routes.get("/schedulers")
    def schedulers() -> list[dict]:
        rho = {"automatic": -1.0, "karras": 7.0}
        return [
            {
                "name": n,
                "label": label,
                "aliases": None,
                "default_rho": rho[n],
                "need_inner_model": False,
            }
            for n, label in SCHEDULES.items()
        ]

    @routes.get("/prompt-styles")
    def prompt_styles() -> list[dict]:
        return [{"name": name, **style} for name, style in STYLES.items()]

    routes.include_router(OptionsApi(settings).router())
    return routes


def checked(body: dict, shape: Surface, caps) -> Checked:
    try:
        found = check_fields(body, shape, caps)
        total = found.request().num_outputs * found.given.get("n_iter", 1)
        check_cap("batch_size x n_iter", total, "max_outputs", caps)
    except InvalidInputs as err:
        raise InvalidRequest(err.problems) from None
    except InputError as err:
        raise InvalidRequest([shape.problem(err)]) from None
    return found


def parameters(found: Checked, shape: Surface) -> dict:
    """A1111's `parameters`: every request field with its effective value (images left out,
    as A1111 leaves them out without include_init_images)."""
    out = {}
    for spec in shape.fields:
        if spec.name in ("init_images", "mask"):
            out[spec.name] = None
            continue
        default = None if spec.default is UNSET else spec.default
        out[spec.name] = found.given.get(spec.name, default)
    return out


def progress_of(run: Run | None, skip_current_image: bool) -> dict:
    idle = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if run is None or all(job.done() for job in run.jobs):
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": idle,
            "current_image": None,
            "textinfo": None,
        }
    count = len(run.jobs)
    number = next(i for i, job in enumerate(run.jobs) if not job.done())
    job = run.jobs[number]
    step = job.steps["base"] + job.steps["refiner"]
    plan = job.generation.plan if job.generation is not None else None
    steps = plan.base_steps + plan.refiner_steps if plan else job.request.num_inference_steps
    progress = 0.01 + number / count + (step / max(steps, 1)) / count
    elapsed = time.monotonic() - run.started
    image = None
    if job.preview is not None and not skip_current_image:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(job.preview.jpeg)).save(buffer, "PNG")
        image = base64.b64encode(buffer.getvalue()).decode("ascii")
    state = {
        **idle,
        "skipped": run.skipped,
        "interrupted": run.interrupted,
        "job": f"Batch {number + 1} out of {count}",
        "job_count": count,
        "job_timestamp": run.timestamp,
        "job_no": number,
        "sampling_step": step,
        "sampling_steps": steps,
    }
    return {
        "progress": min(progress, 1.0),
        "eta_relative": max(0.0, elapsed / progress - elapsed),
        "state": state,
        "current_image": image,
        "textinfo": None,
    }
