"""A training on its way through the engine: its archive read and checked when it is prepared
(`Training.prepare`), its slices run on the GPU thread (`Training.slices`: preprocessing, setup,
each step) one at a time under the engine's lock, and between two slices one generation that
waits prepared, so that a prediction arriving during a training starts within one training
step plus its own place in the queue; its archive written on the finishing thread
(`Training.finish`). The training itself changes none of the served models (its modules are its
own), so the prediction's pixels are an idle engine's.

A failure in a slice ends the training as any job ends (the outcome table); out of memory says
which inputs to lower; a CUDA error takes the engine out of order. The generator's own
`finally` frees the training's modules, whatever stopped it.
"""

from __future__ import annotations

import time
from typing import Any

from sdxl.engine.jobs import Job, JobCanceled, JobEvents, Poisoned, ServerStopping

POISON_WORDS = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS")


class TrainingJob(Job):
    """A training (`work`: sdxl.train.training.Training); it ends with its TrainingResult."""

    what = "training"
    CANCELED = "the training was cancelled"
    may_be_overtaken = True  # its archive is read and checked while others run
    prepares_apart = True  # a long archive read never holds a generation's preparation back

    def __init__(
        self,
        job_id: str,
        work: Any,
        events: JobEvents | None = None,
        tenant: str | None = None,
    ):
        super().__init__(job_id, events, tenant)
        self.work = work
        self.steps = {"train": 0}  # training steps run

    @property
    def holds_back_claims(self) -> bool:
        return False  # it runs for long: the jobs behind it are prepared meanwhile

    def prepare(self, runner) -> None:
        self.work.prepare(self.check)

    def run_on(self, lanes) -> None:
        """Its slices, with one generation between two of them (`Lanes.run_one_between`)."""
        self.started_at = time.time()
        lanes.deliver(self.events.started, self)
        lanes.begin_training(self)
        slices = None
        error: BaseException | None = None
        try:
            while True:
                with lanes.lock:
                    if (broken := lanes.hooks.broken()) is not None:
                        raise broken
                    if slices is None:
                        slices = self.work.slices(lanes.runner.models, self)
                    try:
                        next(slices)
                    except StopIteration:
                        break
                    lanes.device_tasks.run_pending()  # a finished prediction's safety checker
                lanes.run_one_between()
        except Poisoned as err:
            error = lanes.hooks.break_down(err.reason)
        except BaseException as err:
            error = self._translated(err, lanes.hooks.break_down)
        if slices is not None:
            slices.close()
        lanes.off_the_gpu(self, error, None)

    def _translated(self, err: BaseException, break_down) -> BaseException:
        import torch

        if isinstance(err, JobCanceled) and self.stopping:
            return ServerStopping(str(err))  # handed back with its checkpoint, not cancelled
        if isinstance(err, torch.OutOfMemoryError):
            return self.work.out_of_memory()  # it says which of the training's inputs to lower
        if isinstance(err, Exception) and any(word in str(err) for word in POISON_WORDS):
            return break_down(f"{type(err).__name__}: {str(err)[:300]}")
        return err

    def finish(self, runner, denoised: Any) -> Any:
        return self.work.finish()  # the training's archive written

    def done_line(self, took: float) -> str:
        return f"done in {took:.2f} s: {self.steps['train']} training steps"
