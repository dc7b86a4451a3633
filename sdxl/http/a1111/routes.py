"""AUTOMATIC1111's API (`/sdapi/v1/...`), answered as A1111 1.10 answers, so that the tools
built for it (Open WebUI's and LibreChat's Automatic1111 engines, SillyTavern, webuiapi, bots)
can use this server: txt2img and img2img, progress with a preview of the caller's running job,
interrupt and skip of the caller's jobs, and the lists and options those tools read at start.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.config import STYLES
from sdxl.engine import Job, JobCanceled
from sdxl.errors import InputError
from sdxl.http.a1111 import upscalers
from sdxl.http.a1111.controlnet import saved_maps
from sdxl.http.a1111.controlnet_routes import models_of
from sdxl.http.a1111.fields import (
    SAME_SAMPLER,
    SAME_SCHEDULER,
    WIRE,
    chosen,
    sampler_of,
    surface,
)
from sdxl.http.a1111.info import Made, info_json, infotext, lora_hashes
from sdxl.http.a1111.ip_units import detected_maps as ip_maps
from sdxl.http.a1111.options import OptionsApi
from sdxl.http.a1111.progress import Run, Runs, progress_of
from sdxl.http.a1111.upscalers import png_base64
from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.schemas import body_doc
from sdxl.http.server_settings import PREVIEW_EVERY, Settings
from sdxl.http.shapes import A1111Route
from sdxl.http.sync import SyncJobs, outcome, until_done
from sdxl.http.trained import TrainedModels
from sdxl.http.wire import checked as wire_checked
from sdxl.images.outputs import encode_outputs
from sdxl.inputs.a1111_samplers import offered_schedules, runnable_samplers
from sdxl.inputs.presets import apply_presets
from sdxl.inputs.request import in_batches
from sdxl.inputs.rules import check_cap
from sdxl.inputs.surface import UNSET, Checked, InvalidInputs, Surface

EXAMPLE = '{"prompt": "a cat", "steps": 20}'
INTERRUPTED = "interrupted (POST /sdapi/v1/interrupt)"
SKIPPED = "skipped (POST /sdapi/v1/skip)"


def router(sync: SyncJobs, settings: Settings, trained: TrainedModels) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1", route_class=A1111Route)
    caps = sync.service.engine.settings.caps
    runs = Runs()
    options = OptionsApi(settings, trained, getattr(sync.service.engine, "loras", None))
    models = models_of(sync.service.engine)  # the control models, read per call
    txt2img_shape, img2img_shape = surface(False, models), surface(True, models)

    async def generate(http: HttpRequest, shape: Surface, img2img: bool) -> dict:
        body = await json_object(http, EXAMPLE, empty="{}")
        applied = await asyncio.to_thread(options.for_request, http, body)
        caller = caller_of(http)
        loras = sync.service.lora_check(caller)
        found = await asyncio.to_thread(checked, body, shape, caps, loras)
        # lists the upscalers/ folder: off the event loop
        await asyncio.to_thread(upscalers.check_hr_upscaler, found.request(), sync.service.engine)
        first = replace(
            found.request(), trained_tar=applied.trained_tar, clip_skip=applied.clip_skip
        )
        requests = in_batches(first, [first.num_outputs] * found.given.get("n_iter", 1))
        jobs = sync.submit(requests, caller)  # previews once /progress asks (progress.py)
        run = Run(jobs)
        runs.add(caller, run)
        try:
            await until_done(http, jobs)
        finally:
            runs.remove(caller, run)
        return await asyncio.to_thread(
            answer, found, shape, img2img, jobs, run, applied.model, caller
        )

    def answer(found: Checked, shape, img2img: bool, jobs: list[Job], run: Run, model, caller):
        made = made_by(found, img2img, jobs, run.timestamp, model)
        made = replace(made, lora_hashes=lora_hashes(made.request, options.loras, caller))
        images, seeds, nsfw, maps = [], [], [], []
        for job in jobs:
            if isinstance(job.error, JobCanceled):  # interrupted or skipped: A1111 answers
                continue  # with the images it has
            result = outcome(job, shape)
            texts = [infotext(made, seed) for seed in result.seeds]  # each PNG's `parameters`
            for output in encode_outputs(result, "png", 100, flagged="black", texts=texts):
                encoded = base64.b64encode(output.data).decode("ascii")
                (maps if output.control_map else images).append(encoded)
            seeds += result.seeds
            nsfw += result.nsfw
        images += detected_maps(found, maps)
        send = found.given.get("send_images", True)
        return {
            "images": images if send else [],
            "parameters": parameters(found, shape),
            "info": info_json(replace(made, seeds=seeds), nsfw),
        }

    @routes.post(
        "/txt2img",
        summary="AUTOMATIC1111's text to image",
        openapi_extra=body_doc("Txt2ImgRequest"),
    )
    async def txt2img(http: HttpRequest) -> dict:
        return await generate(http, txt2img_shape, img2img=False)

    @routes.post(
        "/img2img",
        summary="AUTOMATIC1111's image to image and inpainting",
        openapi_extra=body_doc("Img2ImgRequest"),
    )
    async def img2img(http: HttpRequest) -> dict:
        return await generate(http, img2img_shape, img2img=True)

    @routes.get("/progress", summary="The caller's running request, with a preview")
    def progress(http: HttpRequest, skip_current_image: bool = False) -> dict:
        return progress_of(runs.current(caller_of(http)), skip_current_image, PREVIEW_EVERY)

    @routes.post("/interrupt", summary="Stop the caller's running request")
    def interrupt(http: HttpRequest) -> dict:
        caller = caller_of(http)
        for run in runs.of(caller):
            run.interrupted = True
        for job in sync.of_caller(caller):  # the running batch ends with its partial images
            job.stop_early(INTERRUPTED)
        return {}

    @routes.post("/skip", summary="Skip the caller's running batch; the next one runs")
    def skip(http: HttpRequest) -> JSONResponse:
        run = runs.current(caller_of(http))
        running = [job for job in (run.jobs if run else []) if not job.done()]
        if running:
            run.skipped = True
            running[0].cancel(SKIPPED)
        return JSONResponse(None)

    @routes.get("/samplers")
    def samplers() -> list[dict]:
        """The samplers this server runs (those whose modules import), with A1111's options."""
        return [
            {"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)}
            for s in runnable_samplers()
        ]

    @routes.get("/schedulers")
    def schedulers() -> list[dict]:
        return [
            {
                "name": s.name,
                "label": s.label,
                "aliases": list(s.aliases) or None,
                "default_rho": s.default_rho,
                "need_inner_model": s.need_inner_model,
            }
            for s in offered_schedules()
        ]

    @routes.get("/prompt-styles")
    def prompt_styles() -> list[dict]:
        return [{"name": name, **style} for name, style in STYLES.items()]

    routes.include_router(options.router())
    routes.include_router(upscalers.router(sync))
    return routes


def detected_maps(found: Checked, maps: list[str]) -> list[str]:
    """The ControlNet units' maps as the extension appends them after the images: once per
    request (the first batch's), each unit's unless its save_detected_map is false."""
    scripts = found.given.get("alwayson_scripts", {})
    keep = saved_maps(scripts)
    first = [data for data, kept in zip(maps[: len(keep)], keep, strict=False) if kept]
    init = (found.given.get("init_images") or [None])[0]
    return [m if isinstance(m, str) else png_base64(m) for m in ip_maps(scripts, first, init)]


def checked(body: dict, shape: Surface, caps, loras=None) -> Checked:
    try:
        found = wire_checked(body, shape, WIRE, caps, loras)
        total = found.request().num_outputs * found.given.get("n_iter", 1)
        check_cap("batch_size x n_iter", total, "max_outputs", caps)
    except InvalidInputs as err:
        raise InvalidRequest(err.problems) from None
    except InputError as err:
        raise InvalidRequest([shape.problem(err)]) from None
    return found


def made_by(found: Checked, img2img: bool, jobs: list[Job], timestamp: str, model: str) -> Made:
    """How the request's images were made, as its infotexts say (no seeds yet)."""
    request = jobs[0].request
    generation = jobs[0].generation
    name = found.given.get("sampler_name") or found.given.get("sampler_index", "Euler")
    _, sampler, schedule = sampler_of(name, found.given.get("scheduler", "automatic"))
    size = (request.width, request.height)  # the first pass's, with the hires fix (A1111's)
    if generation is not None and not request.hires:
        size = (generation.width, generation.height)
    strength = request.prompt_strength if img2img else None
    return Made(
        request=as_written(found, request, generation),
        seeds=[],
        sampler=sampler,
        schedule=schedule,
        width=size[0],
        height=size[1],
        denoising_strength=request.hires_strength if request.hires else strength,
        model=model,
        timestamp=timestamp,
        hires=hires_params(found, request, (sampler, schedule)),
    )


def hires_params(found: Checked, request, first: tuple[str, str]) -> dict:
    """The hires fix's infotext keys, as A1111 writes them and in its order (none without
    enable_hr); its sampler and prompts only where they differ from the first pass's."""
    if not request.hires:
        return {}
    given, out = found.given, {}
    sampler, schedule = first
    if request.hires_scheduler is not None:
        hr_sampler = chosen(given.get("hr_sampler_name"), SAME_SAMPLER) or first[0]
        hr_schedule = chosen(given.get("hr_scheduler"), SAME_SCHEDULER)
        hr_schedule = hr_schedule or given.get("scheduler", "automatic")
        _, sampler, schedule = sampler_of(hr_sampler, hr_schedule)
    if sampler != first[0]:
        out["Hires sampler"] = sampler
    if request.hires_prompt is not None and request.hires_prompt != given.get("prompt", ""):
        out["Hires prompt"] = request.hires_prompt
    negative = request.hires_negative_prompt
    if negative is not None and negative != given.get("negative_prompt", ""):
        out["Hires negative prompt"] = negative
    if schedule != first[1]:
        out["Hires schedule type"] = schedule
    resize = (given.get("hr_resize_x", 0), given.get("hr_resize_y", 0))
    if any(resize):
        out["Hires resize"] = f"{resize[0]}x{resize[1]}"
    else:
        out["Hires upscale"] = _plain(request.hires_scale)
    if request.hires_steps:
        out["Hires steps"] = request.hires_steps
    out["Hires upscaler"] = request.hires_upscaler
    return out


def _plain(number: float) -> float | int:
    """2.0 as A1111's form sends it (2); 1.5 as it is."""
    return int(number) if float(number).is_integer() else number


def as_written(found: Checked, request, generation):
    """The request as it ran, with its prompts as the user wrote them (`<lora:..>` tags kept,
    as A1111's infotext keeps them), the style applied."""
    ran = generation.request if generation is not None else request
    written = replace(
        request,
        prompt=found.given.get("prompt", request.prompt),
        negative_prompt=found.given.get("negative_prompt", request.negative_prompt),
    )
    styled = apply_presets(written)
    return replace(ran, prompt=styled.prompt, negative_prompt=styled.negative_prompt)


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
