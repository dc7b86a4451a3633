"""A generation: one `Request` on its way through the engine, from its preparation to its
images.

Prepared on a preparation thread (`Runner.prepare`: the model's rules, images fetched and
decoded, the steps planned, trained weights read into host memory), run on the GPU thread under
the engine's lock (`Runner.run`: denoised and decoded), finished on the finishing thread
(`Runner.finish`: images, watermark, safety checker). It may run between two slices of a
training, and only one that downloads may be overtaken while it prepares.
"""

from __future__ import annotations

import time
from typing import Any

from sdxl.engine.ending import forget_frames
from sdxl.engine.jobs import Job, JobEvents, JobStatus, Poisoned
from sdxl.inputs.request import Request


class GenerationJob(Job):
    """A request for images: prepared (checks, images, plan, trained weights read into host
    memory), denoised and decoded on the GPU thread, finished into images on the CPU."""

    what = "generation"
    CANCELED = "the prediction was cancelled"
    runs_between_slices = True

    def __init__(
        self,
        job_id: str,
        request: Request,
        events: JobEvents | None = None,
        preview_every: int = 0,
        tenant: str | None = None,
    ):
        super().__init__(job_id, events, tenant)
        self.request = request
        # A preview of the latents every this many steps of each stage, and after its last
        # (0: none); each is in `preview` and goes to events.preview, all before `finished`.
        self.preview_every = preview_every
        self.preview: Any = None  # the latest sdxl.generate.preview.Preview
        # Whether preparing it fetches something (trained weights, image URLs): only such a
        # job can be overtaken by the ones behind it; the others are waited for, in order.
        self.downloads = request.fetches
        self.steps = {"base": 0, "refiner": 0}  # UNet steps run, per stage
        if request.hires:
            self.steps["hires"] = 0  # the hires fix's second pass
        self.generation: Any = None  # sdxl.generate.plan.Generation, once prepared
        self.weights: Any = None  # sdxl.adapters.staging.StagedWeights, once prepared
        # Why it stops after the step under way with the images of the latents it has
        # (`stop_early`); None: it runs all its steps.
        self.stop_reason: str | None = None

    def want_previews(self, every: int) -> None:
        """Someone reads the previews (`every` > 0: one every that many steps, from the next
        step on) or no longer does (0: none is made any more). Previews are the model's work
        only while someone reads them."""
        if not self.done():
            self.preview_every = every

    def stop_early(self, reason: str) -> None:
        """AUTOMATIC1111's interrupt: a running job stops after the step under way and ends
        with the images decoded from the latents it has (it succeeds: its log says why it
        stopped); a job not running yet has no latents and is cancelled."""
        if self.done():
            return
        self.stop_reason = reason
        if self.status is not JobStatus.RUNNING:
            self.cancel(reason)

    @property
    def may_be_overtaken(self) -> bool:
        return self.downloads

    @property
    def holds_back_claims(self) -> bool:
        # One that downloads does not hold the next job back while it fetches.
        return not (self.downloads and self.status in (JobStatus.QUEUED, JobStatus.PREPARING))

    def prepare(self, runner) -> None:
        runner.prepare(self)

    def run_on(self, lanes) -> None:
        """Its GPU work under the engine's lock: trained weights applied, denoised, decoded,
        the shared models put back (`Runner.run`); then on to the finishing thread."""
        self.started_at = time.time()
        lanes.deliver(self.events.started, self)
        error: BaseException | None = None
        denoised = None
        with lanes.lock:
            lanes.took_lock(self)
            try:
                if (broken := lanes.hooks.broken()) is not None:
                    raise broken
                denoised = lanes.runner.run(self)
            except Poisoned as err:
                error = lanes.hooks.break_down(err.reason)
                forget_frames(err)
            except BaseException as err:
                error = err
            lanes.lets_go_of_lock(self)
        lanes.off_the_gpu(self, error, denoised)

    def finish(self, runner, denoised: Any) -> Any:
        return runner.finish(self, denoised)

    def release(self, runner) -> None:
        if runner is not None:
            runner.release(self)

    def done_line(self, took: float) -> str:
        plan = self.generation.plan
        peak = self.peak_device_bytes
        memory = "" if peak is None else f"; peak GPU memory {peak / 2**30:.2f} GiB"
        hires = f", hires fix ran {self.steps['hires']} steps" if plan.hires_steps else ""
        planned = f" + {plan.hires_steps}" if plan.hires_steps else ""
        return (
            f"done in {took:.2f} s: base ran {self.steps['base']} steps, refiner ran "
            f"{self.steps['refiner']} steps{hires} (planned {plan.base_steps} + "
            f"{plan.refiner_steps}{planned}); seeds {self.generation.seeds}{memory}"
        )
