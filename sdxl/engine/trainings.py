"""A training on the GPU thread: its slices (`Training.slices`: preprocessing, setup, each
step) one at a time under the engine's lock, and between two slices one prediction that waits
prepared, so that a prediction arriving during a training starts within one training step
plus its own place in the queue. The training itself changes none of the served models (its
modules are its own), so the prediction's pixels are an idle engine's.

A failure in a slice ends the training as any job ends (the outcome table); out of memory says
which inputs to lower; a CUDA error takes the engine out of order. The generator's own
`finally` frees the training's modules, whatever stopped it.
"""

from __future__ import annotations

import time

from sdxl.engine.jobs import EngineBroken, Job, JobCanceled, JobStatus, Poisoned, ServerStopping

POISON_WORDS = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS")


def run_training(lanes, job: Job) -> None:
    """On the GPU thread, `lanes.running` already `job`."""
    engine = lanes.engine
    job.started_at = time.time()
    lanes.deliver(job.events.started, job)
    slices = None
    error: BaseException | None = None
    with lanes.cond:
        lanes.training, lanes.running = job, None
        lanes.cond.notify_all()
    try:
        while True:
            with engine.lock:
                if engine.broken:
                    raise EngineBroken(engine.broken_message())
                if slices is None:
                    slices = job.work.slices(engine.models, job)
                try:
                    next(slices)
                except StopIteration:
                    break
                engine.device_tasks.run_pending()  # a finished prediction's safety checker
            serve_one_between(lanes)
    except Poisoned as err:
        engine.break_down(err.reason)
        error = EngineBroken(engine.broken_message())
    except BaseException as err:
        error = _translated(err, job, engine)
    if slices is not None:
        slices.close()
    with lanes.cond:
        lanes.training = None
        if error is None:
            lanes.finishing.append(job)
        lanes.cond.notify_all()
    if error is not None:
        outcome = lanes.forget(job, error)
        engine.free_memory()
        lanes.settle(job, error, forgotten=outcome)
        return
    lanes.finish_pool.submit(lanes.finish_training, job)


def serve_one_between(lanes) -> None:
    """Run the first prediction that waits prepared, if one does (fair share: one per slice)."""
    with lanes.cond:
        waiting = lanes.next_ready(predictions_only=True)
        if waiting is None:
            return
        lanes.claimed.remove(waiting)
        lanes.running = waiting
        waiting.status = JobStatus.RUNNING
    lanes.execute(waiting)


def _translated(err: BaseException, job: Job, engine) -> BaseException:
    import torch

    if isinstance(err, JobCanceled) and job.stopping:
        return ServerStopping(str(err))  # handed back with its checkpoint, not cancelled

    if isinstance(err, torch.OutOfMemoryError):
        return job.work.out_of_memory()  # it says which of the training's inputs to lower
    if isinstance(err, Exception) and any(word in str(err) for word in POISON_WORDS):
        engine.break_down(f"{type(err).__name__}: {str(err)[:300]}")
        return EngineBroken(engine.broken_message())
    return err
