"""The engine's threads on the tiny model: the GPU thread runs only the GPU (the next job
denoises while the last one's images are made), a job that fails leaves none of its tensors
reachable, and the lock's idle time is measured. Ordered by events and gates, never by time."""

from __future__ import annotations

import itertools
import threading
import weakref

import numpy as np
import pytest
import torch
from conftest import start_engine

from sdxl.engine import JobEvents, OutOfMemory
from sdxl.inputs.request import Request

SIZE = 256


def small(seed: int = 3, **kw) -> Request:
    base = dict(prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=3)
    return Request(**{**base, "seed": seed, **kw})


def pixels(result) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in result.images]


@pytest.fixture
def engine(tiny_weights):
    eng = start_engine(tiny_weights)
    yield eng
    eng.close()


def test_the_next_job_denoises_while_the_last_ones_images_are_made(engine, monkeypatch):
    """The first job's watermark is held at a gate: the second job runs all its steps
    meanwhile, so the lock is free while the CPU finishes images."""
    import sdxl.generate.finish as finishing

    expected = pixels(engine.run(small(seed=1)))  # the same job, never held
    gate, held = threading.Event(), threading.Event()
    real = finishing.apply_watermark

    def gated(images):
        held.set()
        assert gate.wait(60)
        return real(images)

    monkeypatch.setattr(finishing, "apply_watermark", gated)
    first_done_at_steps: list[bool] = []
    first = engine.submit(small(seed=1))
    second = engine.submit(
        small(seed=2, apply_watermark=False),
        events=JobEvents(step=lambda *a: first_done_at_steps.append(first.done())),
    )
    try:
        assert held.wait(60)  # the first job's images are being made, and wait at the gate
        assert second.wait(0) is False
        for _ in range(600):  # bounded: the second job takes its three steps meanwhile
            if second.steps["base"] == 3:
                break
            threading.Event().wait(0.05)
        assert second.steps["base"] == 3 and not first.done()
        assert first.status == "running"  # still running, from its caller's view
    finally:
        gate.set()
    assert first.wait(60) and second.wait(60)
    assert first_done_at_steps == [False, False, False]
    assert pixels(first.result()) == expected  # finished off the lock: the same pixels
    assert engine.idle


def test_the_lock_stands_idle_only_between_jobs_that_were_ready(engine):
    jobs = [engine.submit(small(seed=s)) for s in range(4)]
    assert all(job.wait(60) for job in jobs)
    for job in jobs:
        assert job.gpu_ended_at >= job.gpu_started_at
    later = [job.lock_idle_s for job in jobs[1:]]
    assert all(idle is not None and idle >= 0 for idle in later)
    ordered = sorted(jobs, key=lambda job: job.gpu_started_at)
    for before, after in itertools.pairwise(ordered):
        assert after.gpu_started_at >= before.gpu_ended_at  # one at a time under the lock


def _keep(refs: list, tensor: torch.Tensor) -> None:
    refs.append(weakref.ref(tensor))


@pytest.mark.parametrize("error", ["out_of_memory", "internal"])
def test_a_failed_job_leaves_none_of_its_tensors_reachable(engine, monkeypatch, error):
    """A tensor made inside the failing call dies with the job: the failure's frames are
    cleared, so the next job gets the memory back (on CUDA, empty_cache after gc)."""
    unet = engine.models.base.unet
    real = unet.forward
    refs: list[weakref.ref] = []

    def failing(sample, *args, **kwargs):
        activations = sample * 2.0  # what a real forward holds when it runs out of memory
        _keep(refs, activations)
        monkeypatch.setattr(unet, "forward", real)  # once
        if error == "out_of_memory":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(unet, "forward", failing)
    job = engine.submit(small())
    assert job.wait(60) and job.status == "failed"
    assert job.outcome.kind == error
    if error == "out_of_memory":
        assert isinstance(job.error, OutOfMemory)
    assert job.error.__traceback__ is None and job.error.__context__ is None
    assert len(refs) == 1 and refs[0]() is None  # the job's tensor is gone
    assert engine.run(small(seed=8)).images  # and the engine serves the next job


def test_a_cancelled_job_leaves_its_activations_unreachable(engine):
    """The cancel is raised from inside diffusers' loop, whose frames hold the UNet's inputs
    and outputs: once the job has ended, none of them is reachable."""
    refs: list[weakref.ref] = []

    def keep(module, args, output) -> None:  # None: the output stays as it is
        _keep(refs, args[0])
        _keep(refs, output[0])

    hook = engine.models.base.unet.register_forward_hook(keep)

    def cancel_at_step_2(job, stage, done, total):
        if done == 2:
            job.cancel()

    try:
        job = engine.submit(small(num_inference_steps=50), events=JobEvents(step=cancel_at_step_2))
        assert job.wait(60) and job.status == "canceled"
    finally:
        hook.remove()
    assert job.error.__traceback__ is None
    assert len(refs) == 4 and all(ref() is None for ref in refs)
