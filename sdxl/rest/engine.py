"""The one model, loaded in the background, and the generations run on it one at a time.

Nothing here knows HTTP. torch and diffusers are imported by the loading thread, so the
server binds its port at once and answers /health while the model loads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from functools import partial
from typing import Any

from sdxl.config import Runtime
from sdxl.request import Request
from sdxl.rest.worker import WorkQueue

log = logging.getLogger(__name__)

LOADING, READY, FAILED, DRAINING = "loading", "ready", "failed", "draining"


class Engine:
    """Holds the loaded models and the work queue; runs one request at a time."""

    def __init__(self, runtime: Runtime, queue: WorkQueue):
        self.runtime = runtime
        self.queue = queue
        self.load_error: str | None = None
        self._models: Any = None
        self._state = LOADING
        self._draining = False
        self._ids = itertools.count(1)

    # ---- lifecycle ----

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, name="sdxl-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from sdxl.pipelines import load_models

            models = load_models(self.runtime)
        except Exception as err:
            log.exception("loading the model from %s failed", self.runtime.weights_dir)
            self.load_error = f"{type(err).__name__}: {err}"
            self._state = FAILED
            return
        models.progress_bars = False  # the server logs each step as a line instead
        self._models = models
        self._state = READY
        log.info("model ready after %.1f s; accepting generations", time.perf_counter() - started)

    def begin_drain(self) -> None:
        """Take no new work; what is queued or running still finishes."""
        if not self._draining:
            self._draining = True
            counts = self.queue.counts()
            log.info(
                "draining: %d running and %d queued will finish; new requests get 503",
                counts["running"],
                counts["queued"],
            )

    @property
    def status(self) -> str:
        """loading | ready | failed | draining"""
        if self._draining and self._state != FAILED:
            return DRAINING
        return self._state

    @property
    def drained(self) -> bool:
        return self._draining and self.queue.idle

    def health(self) -> dict:
        report = {"status": self.status, **self.queue.counts(), "queue_size": self.queue.capacity}
        if self.load_error is not None:
            report["error"] = self.load_error
        return report

    # ---- work ----

    def next_id(self) -> int:
        return next(self._ids)

    async def generate(self, job_id: int, request: Request):
        """Queue `request` behind the others and return its `sdxl.generate.Result`.

        Raises QueueFullError when the queue is full, and whatever `generate` raises
        (sdxl.errors.InputError for bad input).
        """
        return await self.queue.submit(partial(self._run, job_id, request))

    def _run(self, job_id: int, request: Request):
        from sdxl.generate import generate

        ran: Counter[str] = Counter()

        def count_step(stage: str, index: int, total: int) -> None:
            ran[stage] += 1

        log.info(
            "job %d started: %s size=%s scheduler=%s refine=%s steps=%d images=%d",
            job_id,
            request.mode,
            "of seed_image" if request.image else f"{request.width}x{request.height}",
            request.scheduler,
            request.refine,
            request.num_inference_steps,
            request.num_outputs,
        )
        started = time.perf_counter()
        result = generate(self._models, request, on_step=count_step)
        log.info(
            "job %d done in %.2f s: base ran %d steps, refiner ran %d steps "
            "(planned %d + %d); seeds %s",
            job_id,
            time.perf_counter() - started,
            ran["base"],
            ran["refiner"],
            result.plan.base_steps,
            result.plan.refiner_steps,
            result.seeds,
        )
        return result
