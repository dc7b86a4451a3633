"""The engine owns the loaded models; every API submits jobs to it and nothing else runs them.

A caller's thread `submit`s a job to the queue (`run` also waits for it, in short timeouts, so
that an exception raised in the caller's thread, such as Cog's cancel, becomes a cancel). The
engine's own threads take it from there (`sdxl.engine.lanes`, the one owner of the jobs on
their way): claimed, prepared off the GPU, run on the one GPU thread under the engine's lock,
finished on the CPU while the next job runs, its events delivered in order. A job is a
`GenerationJob` or a `TrainingJob`; each kind says how it is prepared, run and finished.

The engine owns the models, their state (loading, ready, failed, broken) and the lock; it gives
the lanes what they need of it (`Hooks`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from sdxl.adapters.library import LoraLibrary
from sdxl.config import LORAS_DIR, NAMED_LORAS
from sdxl.control.ip_library import IpAdapterLibrary
from sdxl.control.library import ControlLibrary
from sdxl.engine.device_tasks import DeviceTasks
from sdxl.engine.engine_settings import EngineSettings
from sdxl.engine.generation_job import GenerationJob
from sdxl.engine.jobs import EngineBroken, Job, JobEvents, notify
from sdxl.engine.lanes import STOPPING, Hooks, Lanes
from sdxl.engine.queue import JobQueue, MemoryQueue
from sdxl.engine.training_job import TrainingJob
from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.request import Request
from sdxl.logs import adopt_library_loggers, quiet_libraries
from sdxl.settings import Runtime

log = logging.getLogger(__name__)


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"  # loaded and sound: it takes jobs
    LOAD_FAILED = "failed"
    BROKEN = "broken"  # the shared models can no longer be trusted


class Engine:
    def __init__(
        self,
        runtime: Runtime,
        settings: EngineSettings | None = None,
        queue: JobQueue | None = None,
        *,
        models: Any = None,
        cache: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runtime = runtime
        self.settings = settings or EngineSettings()
        self.queue = queue if queue is not None else MemoryQueue()
        self.models = models  # sdxl.model.pipelines.Models, once loaded
        self.cache = cache  # sdxl.adapters.fetch.DownloadCache (None: one for settings.fetch)
        self.clock = clock  # what SDXL_MAX_SECONDS is measured on (tests give their own)
        self.state = EngineState.LOADING
        self.reason: str | None = None  # why the state is failed or broken
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None
        self.lock = threading.RLock()  # held while the shared models are in use or changed
        self.device_tasks = DeviceTasks(self.lock)  # other threads' short device work
        self.runner: Any = None  # sdxl.engine.runner.Runner, once loaded
        self._loras: LoraLibrary | None = None
        # Called with each job once it has ended (the runtime's metrics); on the engine's
        # threads, so short.
        self.observers: list[Callable[[Job], Any]] = []
        self._ids = itertools.count(1)
        hooks = Hooks(
            takes_stored=lambda: self.takes_stored,
            broken=self._broken_error,
            break_down=self.break_down,
            free_memory=self.free_memory,
            observe=self._observe,
        )
        # Its threads start once the models are loaded.
        self._lanes = Lanes(
            self.queue, self.lock, self.device_tasks, hooks, self.settings.prepare_workers
        )

    # ---- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Load the models (unless given) and warm them up on the GPU thread, then take jobs.
        Raises if loading fails."""
        started = time.perf_counter()
        try:
            quiet_libraries()  # before diffusers and transformers say anything
            adopt_library_loggers()
            from sdxl.engine.runner import Runner

            if self.models is None:
                from sdxl.model.loading import load_models

                self.models = load_models(self.runtime)
            self.runner = Runner(
                self.models,
                self.settings,
                self._lora_dir(),
                self.cache,
                self.clock,
                device_tasks=self.device_tasks,
            )
            warmed = threading.Event()
            self._lanes.start(self.runner, self.warm_up, warmed)
            warmed.wait()
            if self.state == EngineState.LOAD_FAILED:
                raise RuntimeError(self.reason)
        except BaseException as err:
            if self.state != EngineState.LOAD_FAILED:
                self.state, self.reason = EngineState.LOAD_FAILED, f"{type(err).__name__}: {err}"
            raise
        self.load_seconds = time.perf_counter() - started
        self.state = EngineState.READY
        self._lanes.changed()  # it takes stored jobs from now on

    def warm_up(self) -> None:
        """On the GPU thread, before its first job (`Lanes`)."""
        try:
            self.warmup_seconds = self.runner.warm_up()
        except BaseException as err:
            self.state, self.reason = EngineState.LOAD_FAILED, f"warm-up: {err}"
            raise
        if self.warmup_seconds is not None:
            log.info("warmed up in %.1f s", self.warmup_seconds)

    def start_loading(self) -> threading.Thread:
        """`load` on a thread of its own (the APIs answer while the model loads)."""

        def load() -> None:
            try:
                self.load()
            except Exception:
                log.exception("loading the model from %s failed", self.runtime.weights_dir)

        thread = threading.Thread(target=load, name="sdxl-load", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop taking jobs; jobs not yet running are cancelled."""
        self._lanes.close()
        if self.runner is not None:
            self.runner.close()

    def drain(self, reason: str = STOPPING) -> int:
        """Stop: only the running job finishes (a running training stops at its next step, its
        checkpoint saved, and ends with ServerStopping). Stored jobs claimed and not started go
        back to the store's queue (for another replica or the next start); every other job not
        running ends with ServerStopping(`reason`), and so does any job submitted from now on.
        Returns how many were handed back."""
        return self._lanes.drain(reason)

    @property
    def draining(self) -> bool:
        """Whether `drain` was called: stored jobs are left for others or the next start."""
        return self._lanes.draining

    @property
    def takes_stored(self) -> bool:
        """Whether the engine takes jobs from a store shared with replicas or the next start."""
        return self.state == EngineState.READY and not self.draining

    @property
    def broken(self) -> bool:
        return self.state == EngineState.BROKEN

    def break_down(self, reason: str) -> EngineBroken:
        """The shared models can no longer be trusted (`reason`); returns what every job fails
        with from now on."""
        self.state, self.reason = EngineState.BROKEN, reason
        log.error("the shared models can no longer be trusted: %s", reason)
        self._lanes.changed()  # it takes no stored job any more
        return EngineBroken(self.broken_message())

    def _broken_error(self) -> EngineBroken | None:
        return EngineBroken(self.broken_message()) if self.broken else None

    def broken_message(self) -> str:
        return (
            f"the model server is out of order ({self.reason}); it must be restarted, and "
            "every job fails until then"
        )

    def free_memory(self) -> None:
        """After a failed job, on the GPU thread: what it held goes before the next job."""
        from sdxl.model.device import free_device_memory

        free_device_memory(self.models.device)

    def _observe(self, job: Job) -> None:
        for observer in self.observers:
            notify(observer, job)

    def _lora_dir(self) -> Path:
        return self.settings.lora_dir or self.models.weights_dir / LORAS_DIR

    @property
    def loras(self) -> LoraLibrary:
        """The LoRAs a request's stack may name, per tenant (SDXL_LORA_DIR, its tenant
        folders, offset), readable before the model is loaded."""
        if self._loras is None:
            weights = self.runtime.weights_dir
            folder = self.settings.lora_dir or weights / LORAS_DIR
            self._loras = LoraLibrary(folder, weights / NAMED_LORAS["offset"])
        return self._loras

    @property
    def control_library(self) -> ControlLibrary:
        """The control models under the weights folder (readable before the model loads)."""
        return ControlLibrary(self.runtime.weights_dir)

    @property
    def ip_library(self) -> IpAdapterLibrary:
        """The IP-Adapters under the weights folder (readable before the model loads)."""
        return IpAdapterLibrary(self.runtime.weights_dir)

    @property
    def loras_per_request(self) -> int:
        """LoRAs one request may apply: as many as stay resident, at least one."""
        if self.runner is not None:
            return self.runner.resident.most_per_job
        return max(1, self.settings.resident_loras(self.runtime.compile))

    def lora_check(self, tenant: str | None) -> Callable[[Request], None]:
        """The boundary's check of a request's LoRAs for `tenant` (`check_fields`' `loras`):
        InputError naming an unknown name, a trainer's tar among URLs, or a stack over the
        bound, before the job is stored or queued; and of the control models its ControlNet
        units need. Preparation checks again."""

        def check(request: Request) -> None:
            self.loras.check(request.adapters, tenant, self.loras_per_request)
            self.control_library.check(request.controls)  # its control models are here
            if request.ip_adapter_images:  # its IP-Adapter is here
                self.ip_library.check(request.ip_adapter_model)

        return check

    # ---- jobs ---------------------------------------------------------------------------
    def submit(
        self,
        request: Request,
        *,
        events: JobEvents | None = None,
        job_id: str | None = None,
        preview_every: int = 0,
        tenant: str | None = None,
    ) -> GenerationJob:
        """Queue `request`; the returned job ends succeeded, failed or canceled. With
        `preview_every`, it hands out a preview of its latents every that many steps; `tenant`
        is whose it is (queues take tenants in turn)."""
        job_id = job_id or str(next(self._ids))
        job = GenerationJob(job_id, request, events, preview_every, tenant)
        self._lanes.submit(job)
        return job

    def submit_training(
        self,
        work,
        *,
        events: JobEvents | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
    ) -> TrainingJob:
        """Queue a training (`sdxl.train.training.Training`); the job ends with its
        TrainingResult. Predictions run between its steps."""
        job = TrainingJob(job_id or str(next(self._ids)), work, events, tenant)
        self._lanes.submit(job)
        return job

    def run(self, request: Request, *, on_log=None, events: JobEvents | None = None, poll=0.1):
        """Submit `request` and wait for its Result in this thread, handing each log line to
        `on_log` here. Any exception raised in this thread while it waits (Cog delivers its
        cancel that way) cancels the job; it is raised again once the job has let go."""
        return self.wait(self.submit(request, events=events), on_log, poll)

    def run_training(self, work, *, on_log=None, events: JobEvents | None = None, poll=0.1):
        """`submit_training` and wait for its TrainingResult, as `run` waits."""
        return self.wait(self.submit_training(work, events=events), on_log, poll)

    def wait(self, job: Job, on_log=None, poll: float = 0.1):
        """The job's result, waited for in this thread (see `run`). The wait wakes every
        `poll` s only so that this thread runs Python between two waits: Cog's server delivers
        its cancel with PyThreadState_SetAsyncExc, which raises only then. It reads nothing
        and hands out the log lines that came meanwhile."""
        try:
            while not job.wait(poll):
                _hand_out(job, on_log)
        except BaseException:
            job.cancel()  # in its kind's words
            _wait_through_interruptions(job)
            raise
        finally:
            _hand_out(job, on_log)
        return job.result()

    def counts(self) -> dict[str, int]:
        """What waits and runs: never a database call (the queue counts stored jobs from
        what its claims last read), so that the event loop may ask."""
        return {"queued": self.queue.waiting(stored=self.takes_stored), **self._lanes.counts()}

    @property
    def idle(self) -> bool:
        return not any(self.counts().values())

    def health(self) -> dict:
        report: dict[str, Any] = {"state": self.state, **self.counts()}
        if self.reason is not None:
            report["reason"] = self.reason
        if self.runner is not None:
            report["resident"] = self.runner.resident.stats()
        return report

    def upscale_image(self, image: Any, width: int, height: int, name: str) -> Any:
        """`image` (PIL) upscaled to width x height by the upscaler `name` (sdxl.upscale), on
        the device under the lock, between two steps of the running job; InputError for an
        upscaler this server does not have."""
        from sdxl.upscale.pixels import resize_pixels

        def upscale() -> Any:
            return resize_pixels([image], width, height, name, self.models.upscalers)[0]

        return self.device_tasks.call(upscale)

    def detect_control(self, unit: ControlUnit, width: int, height: int) -> Any:
        """`unit`'s control map (PIL, width x height) of its decoded image, as a job makes it
        (the preprocessor alone: AUTOMATIC1111's /controlnet/detect). CPU work in the caller's
        thread; a depth map runs the depth model on the device between two steps of the
        running job. InputError when the preprocessor's model is not on this server."""
        if self.runner is None:
            raise RuntimeError("the model is not loaded yet")
        self.control_library.check_preprocessor(unit)
        return self.runner.guides.control_map(unit, width, height)

    def training(self) -> TrainingJob | None:
        """The training running on this engine, if one is."""
        return self._lanes.current_training()

    def peak_device_bytes(self) -> int | None:
        """The most device memory one job has allocated since the model loaded (None on the
        CPU)."""
        return self._lanes.peak_device_bytes()


def _hand_out(job: Job, on_log) -> None:
    if on_log is not None:
        for line in job.take_logs():
            on_log(line)


def _wait_through_interruptions(job: Job) -> None:
    """Wait until the engine has let go of `job`, whatever else is raised meanwhile."""
    while True:
        try:
            if job.wait(0.1):
                return
        except BaseException:  # a second cancel while the first is being honoured
            continue
