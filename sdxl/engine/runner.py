"""What the engine's threads do with a job: prepare it off the GPU, run it under the lock.

`Runner.run` is the only code that changes the shared models, and it puts them back before it
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
from pathlib import Path

import torch

from sdxl.adapters.fetch import DownloadCache
from sdxl.adapters.resident import ResidentLimits, ResidentWeights, RestoreError
from sdxl.adapters.staging import HostBudget, Resolver, stage_weights
from sdxl.engine.jobs import DeadlineExceeded, Job, OutOfMemory, Poisoned, notify
from sdxl.engine.settings import EngineSettings
from sdxl.generate.phases import denoise, finish, plan_generation, with_images, with_prompts
from sdxl.generate.preview import make_preview
from sdxl.generate.result import Result
from sdxl.inputs.rules import check_request

log = logging.getLogger("sdxl.engine")

_POISON_WORDS = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS")


class Runner:
    def __init__(
        self, models, settings: EngineSettings, lora_dir: Path, cache=None, clock=time.monotonic
    ):
        self.models = models
        self.settings = settings
        self.clock = clock  # what SDXL_MAX_SECONDS is measured on
        # Previews are made here, off the GPU thread: it only copies the latents.
        self._previews = ThreadPoolExecutor(1, thread_name_prefix="sdxl-preview")
        self.budget = HostBudget(settings.max_prepared_bytes)
        limits = ResidentLimits(
            max_loras=settings.max_resident_loras,
            max_lora_bytes=settings.max_resident_lora_bytes,
            max_unets=settings.resident_unets(models.device.type),
            max_unet_bytes=settings.max_resident_unet_bytes,
        )
        self.resident = ResidentWeights(models, limits)
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
        job.weights = stage_weights(generation.request.adapters, self.resolver, job.check)
        if job.weights is not None:
            generation = with_prompts(generation, job.weights.rewrite)
        job.generation = generation

    def release(self, job: Job) -> None:
        """Give back what the job held in host memory (idempotent)."""
        weights, job.weights = job.weights, None
        if weights is not None:
            self.budget.release(weights.host_bytes)
            weights.close()

    def peak_device_bytes(self) -> int | None:
        if self.models.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.models.device)

    # ---- the GPU thread, the engine's lock held -----------------------------------------
    def run(self, job: Job) -> Result:
        job.check()  # cancelled while it waited for the GPU
        max_seconds = self.settings.max_seconds
        deadline = None if max_seconds is None else self.clock() + max_seconds
        generation = job.generation
        job.log(generation.summary())
        whose = "" if job.tenant is None else f" tenant={job.tenant}"  # a name, never a key
        log.info("job %s started: %s%s", job.id, generation.summary(), whose)  # operators' log
        extra = {}
        pending: list[Future] = []  # this job's previews being made
        try:
            active = self.resident.apply(job.weights)
            try:
                if job.weights is not None:
                    extra["trained_weights"] = job.weights.describe()
                    job.log(_trained_line(job.weights.describe(), active.unet is not None))
                images = denoise(
                    self.models,
                    generation,
                    unet=active.unet,
                    compiled=self._compiled(job),
                    on_step=self._stepper(job, deadline, pending),
                )
                job.check(deadline, self.clock)
            finally:
                self.resident.undo(active)
                wait_futures(pending)  # every preview is out before the job ends
            return finish(self.models, generation, images, **extra)
        except RestoreError as err:
            raise Poisoned(f"the shared models could not be put back: {err}") from err
        except DeadlineExceeded:
            raise DeadlineExceeded(_deadline_message(job, max_seconds)) from None
        except Exception as err:
            if isinstance(err, torch.OutOfMemoryError):
                _free_device_memory()
                raise _out_of_memory(generation) from None
            if any(word in str(err) for word in _POISON_WORDS):
                raise Poisoned(f"{type(err).__name__}: {str(err)[:300]}") from err
            raise

    def _compiled(self, job: Job) -> dict | None:
        """Compiled modules for this job, if it has a compiled shape and no LoRA layer is in
        the UNet (peft's wrappers change the graph the modules were compiled for), and no
        feature cache (DeepCache patches the eager modules' forward)."""
        compiled = self.models.compiled
        if compiled is None or job.request.cache_interval > 1:
            return None
        trained = job.weights is not None or bool(self.resident.loras)
        return compiled.modules_for(job.generation, trained)

    def close(self) -> None:
        self._previews.shutdown(wait=True)

    def _stepper(self, job: Job, deadline: float | None, pending: list[Future]):
        def on_step(stage: str, done: int, total: int, latents) -> None:
            job.steps[stage] += 1
            job.log(f"{stage} step {done}/{total}")
            notify(job.events.step, job, stage, done, total)
            every = job.preview_every
            if every and (done % every == 0 or done == total):
                copied = latents[:1].detach().clone()  # the pipeline's own tensor stays as is
                with contextlib.suppress(RuntimeError):  # the engine is closing: no preview
                    pending.append(self._previews.submit(_preview, job, stage, done, total, copied))
            job.check(deadline, self.clock)  # raises out of the pipeline: no further step

        return on_step


def _preview(job: Job, stage: str, done: int, total: int, latents) -> None:
    try:
        job.preview = make_preview(stage, done, total, latents)
    except Exception:  # a preview that cannot be made must not fail the job
        log.exception("the preview of job %s failed", job.id)
        return
    notify(job.events.preview, job, job.preview)


def _trained_line(described: dict, resident_unet: bool) -> str:
    unet = "resident module" if resident_unet else ("yes" if described["finetuned_unet"] else "no")
    return (
        f"trained weights: LoRA {described['adapters'] or 'none'} (scale "
        f"{described['lora_scale']:g}), fine-tuned UNet: {unet}, new tokens "
        f"{described['tokens'] or 'none'}; LoRA and fine-tune apply to the base UNet only, "
        "new tokens reach the refiner through the shared text_encoder_2"
    )


def _deadline_message(job: Job, max_seconds: float | None) -> str:
    steps = job.steps
    return (
        f"the job ran longer than SDXL_MAX_SECONDS={max_seconds:g} s and was stopped after "
        f"{steps['base']} base and {steps['refiner']} refiner steps; lower num_inference_steps, "
        "the image size or the number of images, or ask the operator to raise the limit"
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


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
