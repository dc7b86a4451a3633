"""What the engine's threads do with a job, phase by phase: `prepare` on a preparation thread
(nothing touches a model), `run` on the GPU thread under the engine's lock (trained weights
applied, denoising, the VAE's decode, the shared models put back), `finish` on the finishing
thread once the lock is free (images, watermark, kept pixels, safety checker).

`run` is the only code that changes the shared models, and it puts them back before it
returns. When they cannot be put back, or a CUDA error leaves the device in doubt, it raises
`Poisoned` and the engine stops trusting them. (Imported by the engine when it loads, so that
importing the engine does not import torch.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdxl.adapters.fetch import DownloadCache
from sdxl.adapters.resident import ResidentLimits, ResidentWeights, RestoreError
from sdxl.adapters.staging import HostBudget, Resolver, stage_weights
from sdxl.engine.engine_settings import EngineSettings
from sdxl.engine.guides import Guides
from sdxl.engine.jobs import DeadlineExceeded, Job, OutOfMemory, Poisoned, notify
from sdxl.engine.prepare import with_images
from sdxl.generate.denoise import denoise
from sdxl.generate.finish import finish
from sdxl.generate.partial import decode_latents
from sdxl.generate.plan import plan_generation, with_prompts
from sdxl.generate.preview import host_latents, make_preview
from sdxl.images.result import Result
from sdxl.inputs.model_rules import check_request
from sdxl.inputs.request import Request
from sdxl.model.device import peak_bytes, start_peak

log = logging.getLogger("sdxl.engine")

_POISON_WORDS = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS")
WARM_UP_STEPS = 4


@dataclass
class Denoised:
    """What the GPU hands the finishing thread: the decoded pixels, and what the images'
    parameters say about trained weights."""

    pixels: np.ndarray  # [batch, height, width, 3] in 0..1 (diffusers' output_type="np")
    extra: dict = field(default_factory=dict)


class StoppedEarly(Exception):
    """Raised out of the pipeline after a step of a job asked to stop early (`stop_early`),
    with the latents it had: the job ends with them decoded."""

    def __init__(self, stage: str, done: int, total: int, latents):
        super().__init__(f"stopped after {stage} step {done}/{total}")
        self.stage, self.done, self.total, self.latents = stage, done, total, latents


class Runner:
    def __init__(
        self,
        models,
        settings: EngineSettings,
        lora_dir: Path,
        cache=None,
        clock=time.monotonic,
        device_tasks=None,
    ):
        self.models = models
        # The engine's sdxl.engine.device_tasks.DeviceTasks: the safety checker's forward, run
        # between two steps of the job on the device, or at once when none runs.
        self.device_tasks = device_tasks
        self.settings = settings
        self.clock = clock  # what SDXL_MAX_SECONDS is measured on
        # Previews are made here, off the GPU thread: it only copies the latents.
        self._previews = ThreadPoolExecutor(1, thread_name_prefix="sdxl-preview")
        self.budget = HostBudget(settings.max_prepared_bytes)
        limits = ResidentLimits(
            max_loras=settings.resident_loras(models.compiled is not None),
            max_lora_bytes=settings.max_resident_lora_bytes,
            max_unets=settings.resident_unets(models.device.type),
            max_unet_bytes=settings.max_resident_unet_bytes,
        )
        self.resident = ResidentWeights(models, limits)
        self.guides = Guides(models, settings, device_tasks)  # ControlNet, IP-Adapter
        self.resolver = Resolver(
            linears=models.unet_linears,
            unet_shapes=models.unet_shapes,
            unet_config=models.base.unet.config,
            weights_dir=models.weights_dir,
            lora_dir=lora_dir,
            cache=cache or DownloadCache(settings.fetch),
            budget=self.budget,
            is_resident=self.resident.is_resident,
        )

    # ---- a preparation thread -----------------------------------------------------------
    def prepare(self, job: Job) -> None:
        """The model's rules checked, the images fetched and decoded, the steps planned and
        the trained weights staged in host memory: everything but the GPU."""
        job.check()
        check_request(job.request)
        request = with_images(job.request, self.settings.fetch, job.check)
        generation = plan_generation(self.models, request, self.settings.caps)
        generation = self.guides.prepare(generation)  # control maps, models here
        job.weights = stage_weights(
            generation.request.adapters, self.resolver, job.check, job.tenant
        )
        if job.weights is not None:
            generation = with_prompts(generation, job.weights.rewrite)
        job.generation = generation

    def release(self, job: Job) -> None:
        """Give back what the job held in host memory (idempotent)."""
        weights, job.weights = job.weights, None
        if weights is not None:
            self.budget.release(weights.host_bytes)
            weights.close()

    # ---- the GPU thread -----------------------------------------------------------------
    def warm_up(self) -> float | None:
        """One short generation per warm-up size through each stage, before the first job
        (compiling what is compiled, which then serves only what ran here); the seconds it
        took, or None when the models ask for none."""
        shapes = self.models.warmup_shapes
        if not shapes:
            return None
        started = time.perf_counter()
        compiled = self.models.compiled
        with compiled.warming() if compiled is not None else contextlib.nullcontext():
            for width, height in shapes:
                request = Request(
                    prompt="warm-up",
                    width=width,
                    height=height,
                    num_inference_steps=WARM_UP_STEPS,
                    seed=0,
                    refine="expert_ensemble_refiner",
                )
                generation = plan_generation(self.models, request)
                modules = None if compiled is None else compiled.modules_for(generation, False)
                denoise(self.models, generation, compiled=modules)
        if self.models.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def run(self, job: Job) -> Denoised:
        """The job's GPU work, the engine's lock held."""
        job.check()  # cancelled while it waited for the GPU
        max_seconds = self.settings.max_seconds
        deadline = None if max_seconds is None else self.clock() + max_seconds
        generation = job.generation
        job.log(generation.summary())
        whose = "" if job.tenant is None else f" tenant={job.tenant}"  # a name, never a key
        log.info("job %s started: %s%s", job.id, generation.summary(), whose)  # operators' log
        extra = {}
        pending: list[Future] = []  # this job's previews being made
        start_peak(self.models.device)
        try:
            active = self.resident.apply(job.weights)
            try:
                if job.weights is not None:
                    extra["trained_weights"] = job.weights.describe()
                    job.log(_trained_line(job.weights.describe(), active.unet is not None))
                unet = active.unet or self.models.base.unet
                try:
                    with self.guides.applied(generation.request, unet) as guides:
                        pixels = denoise(
                            self.models,
                            generation,
                            unet=active.unet,
                            compiled=self._compiled(job),
                            on_step=self._stepper(job, deadline, pending),
                            controlnets=guides.controlnets,
                            image_prompt=guides.image_prompt,
                        )
                except StoppedEarly as stop:
                    pixels = self._stopped(job, stop)
                job.check(deadline, self.clock)
            finally:
                self.resident.undo(active)
                wait_futures(pending)  # every preview is out before the job ends
            return Denoised(pixels, extra)
        except RestoreError as err:
            raise Poisoned(f"the shared models could not be put back: {err}") from err
        except DeadlineExceeded:
            raise DeadlineExceeded(_deadline_message(job, max_seconds)) from None
        except torch.OutOfMemoryError:
            raise _out_of_memory(generation) from None  # the engine frees what the job held
        except Exception as err:
            if any(word in str(err) for word in _POISON_WORDS):
                raise Poisoned(f"{type(err).__name__}: {str(err)[:300]}") from err
            raise
        finally:
            job.peak_device_bytes = peak_bytes(self.models.device)

    def _compiled(self, job: Job) -> dict | None:
        """Compiled modules for this job (sdxl.model.compiled): none with a feature cache
        (DeepCache patches the eager modules' forward); the refiner's and the VAE's only when
        the base UNet carries trained weights (a LoRA's layers change its graph)."""
        compiled = self.models.compiled
        request = job.request
        if compiled is None or request.cache_interval > 1:
            return None
        if request.controls or request.ip_adapter_images:  # inputs it was not compiled for
            return None
        finetune = job.weights is not None and job.weights.finetune is not None
        return compiled.modules_for(job.generation, bool(self.resident.loras) or finetune)

    def _stepper(self, job: Job, deadline: float | None, pending: list[Future]):
        def on_step(stage: str, done: int, total: int, latents) -> None:
            job.steps[stage] += 1
            job.log(f"{stage} step {done}/{total}")
            notify(job.events.step, job, stage, done, total)  # between two steps: it may cancel
            if self.device_tasks is not None:
                self.device_tasks.run_pending()  # a finished job's safety checker, say
            every = job.preview_every
            if every and (done % every == 0 or done == total):
                copied = host_latents(latents)  # the pipeline's own tensor stays as is
                with contextlib.suppress(RuntimeError):  # the engine is closing: no preview
                    pending.append(self._previews.submit(_preview, job, stage, done, total, copied))
            job.check(deadline, self.clock)  # raises out of the pipeline: no further step
            if getattr(job, "stop_reason", None) is not None:  # stop_early: decoded as it is
                raise StoppedEarly(stage, done, total, latents)

        return on_step

    def _stopped(self, job: Job, stop: StoppedEarly) -> np.ndarray:
        """The pixels of a job stopped early: its latents after its last step, decoded."""
        line = f"{job.stop_reason} after {stop.stage} step {stop.done}/{stop.total}"
        job.log(f"{line}: the images are decoded from the latents it had")
        log.info("job %s stopped early: %s", job.id, line)
        return decode_latents(self.models, job.generation, stop.latents)

    # ---- the finishing thread -----------------------------------------------------------
    def finish(self, job: Job, denoised: Denoised) -> Result:
        """The CPU work after the GPU's: images, watermark, kept pixels, safety checker."""
        on_device = None if self.device_tasks is None else self.device_tasks.call
        return finish(self.models, job.generation, denoised.pixels, on_device, **denoised.extra)

    def close(self) -> None:
        self._previews.shutdown(wait=True)


def _preview(job: Job, stage: str, done: int, total: int, latents) -> None:
    try:
        job.preview = make_preview(stage, done, total, latents)
    except Exception:  # a preview that cannot be made must not fail the job
        log.exception("the preview of job %s failed", job.id)
        return
    job.deliver(job.events.preview, job, job.preview)


def _trained_line(described: dict, resident_unet: bool) -> str:
    unet = "resident module" if resident_unet else ("yes" if described["finetuned_unet"] else "no")
    return (
        f"trained weights: LoRA {described['adapters'] or 'none'} (weights "
        f"{described['weights']}), fine-tuned UNet: {unet}, new tokens "
        f"{described['tokens'] or 'none'}; LoRA and fine-tune apply to the base UNet only, "
        "new tokens reach the refiner through the shared text_encoder_2"
    )


def _deadline_message(job: Job, max_seconds: float | None) -> str:
    steps = job.steps
    ran = [f"{steps['base']} base", f"{steps['refiner']} refiner"]
    if "hires" in steps:
        ran.append(f"{steps['hires']} hires fix")
    return (
        f"the job ran longer than SDXL_MAX_SECONDS={max_seconds:g} s and was stopped after "
        f"{', '.join(ran[:-1])} and {ran[-1]} steps; lower "
        "num_inference_steps, the image size or the number of images, or ask the operator to "
        "raise the limit"
    )


def _out_of_memory(generation) -> OutOfMemory:
    req = generation.request
    refiner = " (and the refiner)" if req.refine != "no_refiner" else ""
    size = f"{generation.width}x{generation.height}"
    return OutOfMemory(
        "the GPU ran out of memory for {num_outputs} at {size} with {num_inference_steps}"
        "{refiner}; lower {width:name} and {height:name} or {num_outputs:name}, or use fewer "
        "steps or no refiner",
        "num_outputs",
        req.num_outputs,
        values={"num_outputs": req.num_outputs, "num_inference_steps": req.num_inference_steps},
        words={"size": size, "refiner": refiner},
    )
