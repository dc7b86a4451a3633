"""The engine on the tiny model: serialised, prepared off the lock, cancellable, resident
adapters, failures. Every comparison is with the bytes of a fresh engine; steps are counted on
real UNet passes; downloads come from a real loopback server."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest
import torch
from conftest import start_engine
from safetensors.torch import save
from support.files import Files
from support.helpers import wait_until
from support.loras import old_format_lora, trained_token_files

from sdxl.adapters.fetch import DownloadCache
from sdxl.adapters.resident import ResidentWeights
from sdxl.adapters.staging import HostBudget
from sdxl.engine import (
    DeadlineExceeded,
    EngineBroken,
    GenerationJob,
    JobCanceled,
    JobEvents,
    MemoryQueue,
    OutOfMemory,
)
from sdxl.inputs.request import Request
from sdxl.settings import FetchSettings

SIZE = 256


def small(seed: int = 3, **kw) -> Request:
    base = dict(prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=3)
    return Request(**{**base, "seed": seed, **kw})


def long(**kw) -> Request:
    """A job that runs long enough to be interrupted on a CPU (200 steps)."""
    return small(num_inference_steps=200, **kw)


def pixels(result) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in result.images]


@pytest.fixture
def files():
    server = Files()
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path):
    return DownloadCache(FetchSettings(cache_dir=tmp_path / "cache", public_only=False))


@pytest.fixture(scope="module")
def fresh(tiny_weights):
    """Bytes a fresh engine gives, computed once (each key: the request's repr)."""
    engine = start_engine(tiny_weights)
    seen: dict[str, list[bytes]] = {}

    def bytes_of(request: Request) -> list[bytes]:
        key = repr(request)
        if key not in seen:
            seen[key] = pixels(engine.run(request))
        return seen[key]

    yield bytes_of
    engine.close()


@pytest.fixture
def new_engine(tiny_weights, cache):
    engines = []

    def make(clock=None, **settings):
        engines.append(start_engine(tiny_weights, cache=cache, clock=clock, **settings))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def count_calls(module) -> tuple[list[int], object]:
    calls = [0]
    hook = module.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls, hook


def trainer_tar(models, with_unet: bool = False) -> bytes:
    import io
    import tarfile

    members = trained_token_files(models)
    if with_unet:
        g = torch.Generator().manual_seed(3)
        tuned = {
            k: v + 0.05 * torch.randn(v.shape, generator=g)
            for k, v in models.base.unet.state_dict().items()
            if "norm" not in k
        }
        members["unet.safetensors"] = save(tuned)
    else:
        members["lora.safetensors"] = save(old_format_lora(models.base.unet))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---- one job at a time, whatever the callers do -------------------------------------------


@pytest.mark.parametrize("first", ["plain", "lora"])
def test_two_threads_at_once_get_what_each_gets_alone(new_engine, fresh, first):
    plain = small(seed=11, num_inference_steps=8)
    lora = small(seed=12, num_inference_steps=8, lora_name="offset", lora_scale=1.0)
    order = [plain, lora] if first == "plain" else [lora, plain]
    engine = new_engine()
    results: dict[int, list[bytes]] = {}
    barrier = threading.Barrier(2)

    def call(i: int) -> None:
        barrier.wait()
        time.sleep(0.05 * i)  # submitted in this order, while the other one runs
        results[i] = pixels(engine.run(order[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == fresh(order[0]) and results[1] == fresh(order[1])
    assert fresh(lora) != fresh(Request(**{**lora.__dict__, "lora_name": None}))


# ---- prepare, then run --------------------------------------------------------------------


def test_a_slow_download_never_delays_other_jobs(new_engine, files, fresh):
    engine = new_engine()
    files.files["/slow.safetensors"] = save(old_format_lora(engine.models.base.unet))
    files.held.add("/slow.safetensors")
    slow = engine.submit(small(replicate_weights=files.url + "/slow.safetensors"))
    assert files.started.wait(30)
    plain = engine.submit(small(seed=5))
    assert plain.wait(60) and pixels(plain.result()) == fresh(small(seed=5))
    assert not slow.done() and slow.status == "preparing"
    files.release.set()
    assert slow.wait(60) and slow.result().parameters["trained_weights"]["adapters"]


def test_prepared_jobs_run_in_submission_order(new_engine):
    engine = new_engine()
    started: list[str] = []
    events = JobEvents(started=lambda job: started.append(job.id))
    first = engine.submit(long(), events=events)
    wait_until(lambda: first.status == "running", "running")
    jobs = [engine.submit(small(seed=i), events=events) for i in range(4)]
    first.cancel()
    for job in jobs:
        assert job.wait(60) and job.status == "succeeded"
    assert started == [first.id] + [job.id for job in jobs]


def test_host_memory_for_prepared_weights_is_bounded():
    budget = HostBudget(100)
    budget.acquire(60)
    waited = threading.Event()

    def second():
        budget.acquire(60)
        waited.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not waited.wait(0.3) and budget.used == 60  # past the bound: it waits
    budget.release(60)
    assert waited.wait(5) and budget.used == 60
    thread.join()
    budget.release(60)
    budget.acquire(500)  # alone, an item larger than the bound still goes
    assert budget.used == 500


def test_memory_queue_is_fifo_and_discards():
    queue = MemoryQueue()
    jobs = [GenerationJob(str(i), Request()) for i in range(3)]
    for job in jobs:
        queue.put(job)
    assert queue.discard(jobs[1]) and not queue.discard(jobs[1])
    assert [queue.claim(0), queue.claim(0), queue.claim(0.01)] == [jobs[0], jobs[2], None]
    assert queue.waiting() == 0


# ---- cancellation and deadlines -----------------------------------------------------------


def test_a_queued_job_leaves_the_queue_when_cancelled(new_engine):
    engine = new_engine()
    started: list[str] = []
    running = engine.submit(long(), events=JobEvents(started=lambda job: started.append(job.id)))
    waiting = engine.submit(small(), events=JobEvents(started=lambda job: started.append(job.id)))
    waiting.cancel()
    assert waiting.wait(10) and waiting.status == "canceled"
    with pytest.raises(JobCanceled):
        waiting.result()
    running.cancel()
    assert running.wait(60)
    assert waiting.id not in started


def test_a_running_job_stops_at_the_next_step_and_the_engine_is_free_at_once(new_engine, fresh):
    engine = new_engine()
    models = engine.models
    base_calls, h1 = count_calls(models.base.unet)
    refiner_calls, h2 = count_calls(models.refiner.unet)
    decodes, h3 = count_calls(models.base.vae.decoder)
    cancelled_at: list[float] = []

    def cancel_at_step_2(job, stage, done, total):
        if done == 2:
            cancelled_at.append(time.monotonic())
            job.cancel()

    try:
        job = engine.submit(
            long(refine="expert_ensemble_refiner"), events=JobEvents(step=cancel_at_step_2)
        )
        assert job.wait(60) and job.status == "canceled"
        freed = time.monotonic() - cancelled_at[0]
        assert (base_calls[0], refiner_calls[0], decodes[0]) == (2, 0, 0)
    finally:
        for hook in (h1, h2, h3):
            hook.remove()
    after = engine.run(small(seed=9))
    assert pixels(after) == fresh(small(seed=9))
    print(f"a cancelled job freed the engine {freed * 1000:.1f} ms after the cancel")


def test_an_exception_in_the_callers_thread_cancels_its_job(new_engine):
    """Cog's cancel: an exception raised asynchronously in the thread that waits in run()."""
    engine = new_engine()
    raised: list[BaseException] = []
    steps = threading.Event()

    def caller():
        try:
            engine.run(long(), events=JobEvents(step=lambda *a: steps.set()))
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=caller)
    thread.start()
    assert steps.wait(60)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
    )
    thread.join(60)
    assert raised and isinstance(raised[0], KeyboardInterrupt)
    assert engine.idle  # run() returned only once the engine had let go of the job
    assert engine.run(small()).images


class StepClock:
    """A clock that moves only when told: a second per step of the job that moves it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, *_) -> None:
        self.now += 1.0


def test_a_job_past_sdxl_max_seconds_fails_naming_the_limit(new_engine, fresh):
    clock = StepClock()
    engine = new_engine(max_seconds=2.5, clock=clock)
    over = engine.submit(long(), events=JobEvents(step=clock.tick))  # one second a step
    behind = engine.submit(small(seed=4))  # waits 3 s by that clock: queue time does not count
    assert over.wait(60) and over.status == "failed"
    assert over.steps == {"base": 3, "refiner": 0}  # 3 s after it started: past 2.5 s
    with pytest.raises(DeadlineExceeded, match=r"SDXL_MAX_SECONDS=2.5 s .* after 3 base"):
        over.result()
    assert behind.wait(60) and pixels(behind.result()) == fresh(small(seed=4))


# ---- failures -----------------------------------------------------------------------------


def test_out_of_memory_fails_the_job_and_the_next_one_runs(new_engine, fresh, monkeypatch):
    engine = new_engine()
    unet = engine.models.base.unet
    real = unet.forward

    def out_of_memory(*args, **kwargs):
        monkeypatch.setattr(unet, "forward", real)  # once
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(unet, "forward", out_of_memory)
    with pytest.raises(OutOfMemory, match=r"num_outputs=2 at 256x256 .* lower width"):
        engine.run(small(num_outputs=2))
    assert engine.state == "ready"
    assert pixels(engine.run(small(seed=8))) == fresh(small(seed=8))


def test_a_failed_restore_takes_the_engine_out_of_order(new_engine, monkeypatch):
    engine = new_engine()

    def cannot(self):
        raise RuntimeError("restore injected to fail")

    monkeypatch.setattr(ResidentWeights, "_disable", cannot)
    with pytest.raises(EngineBroken, match="restore injected to fail"):
        engine.run(small(lora_name="offset"))
    assert engine.state == "broken" and "restore injected" in engine.health()["reason"]
    for _ in range(2):  # every later job fails with the same message, before it runs
        with pytest.raises(EngineBroken, match="must be restarted"):
            engine.run(small())


def test_a_cuda_error_takes_the_engine_out_of_order(new_engine, monkeypatch):
    engine = new_engine()

    def poisoned(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine.models.base.unet, "forward", poisoned)
    with pytest.raises(EngineBroken, match="illegal memory access"):
        engine.run(small())
    assert engine.state == "broken"


# ---- resident adapters --------------------------------------------------------------------


def _count_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    real = ResidentWeights._load

    def spy(self, name, lora):
        loads.append(name)
        return real(self, name, lora)

    monkeypatch.setattr(ResidentWeights, "_load", spy)
    return loads


def test_a_repeated_lora_stays_loaded_lru_out(new_engine, files, fresh, monkeypatch):
    engine = new_engine(max_resident_loras=1)
    loads = _count_loads(monkeypatch)
    files.files["/a.tar"] = trainer_tar(engine.models)
    a = small(seed=6, prompt="a photo of TOK", replicate_weights=files.url + "/a.tar")
    b = small(seed=6, prompt="a photo of TOK", lora_name="offset")
    first = pixels(engine.run(a))
    assert pixels(engine.run(a)) == first and len(loads) == 1  # the second call loads nothing
    engine.run(b)
    assert len(loads) == 2 and engine.runner.resident.stats()["loras"] == 1  # a was evicted
    assert pixels(engine.run(a)) == first and len(loads) == 3
    plain = small(seed=6, prompt="a photo of <s0> TOK")  # the trained token text, untrained
    assert pixels(engine.run(plain)) == fresh(plain)


def test_a_lora_over_the_byte_bound_is_unloaded_after_its_job(new_engine, fresh):
    from peft.tuners.tuners_utils import BaseTunerLayer

    engine = new_engine(max_resident_lora_bytes=1)
    engine.run(small(lora_name="offset"))
    assert engine.runner.resident.stats()["loras"] == 0
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.models.base.unet.modules())
    assert pixels(engine.run(small(seed=2))) == fresh(small(seed=2))


def test_a_finetuned_unet_stays_resident_as_its_own_module(new_engine, files, fresh, monkeypatch):
    resident = new_engine(max_resident_unets=1)
    copying = new_engine(max_resident_unets=0)
    files.files["/ft.tar"] = trainer_tar(resident.models, with_unet=True)
    tuned = small(seed=4, prompt="a photo of TOK", replicate_weights=files.url + "/ft.tar")
    shared = {k: v.clone() for k, v in resident.models.base.unet.state_dict().items()}
    builds: list[int] = []
    real = ResidentWeights._build_unet
    monkeypatch.setattr(
        ResidentWeights, "_build_unet", lambda self, t: builds.append(1) or real(self, t)
    )
    first = pixels(resident.run(tuned))
    assert pixels(resident.run(tuned)) == first and len(builds) == 1
    assert first == pixels(copying.run(tuned))  # the same image as copy-and-restore
    after = resident.models.base.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in shared.items())  # shared UNet untouched
    assert pixels(resident.run(small(seed=4))) == fresh(small(seed=4))
    assert pixels(copying.run(small(seed=4))) == fresh(small(seed=4))


# ---- previews ------------------------------------------------------------------------------


def test_previews_come_in_step_order_before_the_end_and_change_no_pixel(new_engine, fresh):
    engine = new_engine()
    events: list[tuple] = []
    delivered = threading.Event()  # events come on the engine's delivery thread, in order

    def finished(job):
        events.append(("finished",))
        delivered.set()

    request = small(seed=5, num_inference_steps=5, refine="expert_ensemble_refiner")
    job = engine.submit(
        request,
        preview_every=2,
        events=JobEvents(
            preview=lambda job, p: events.append((p.stage, p.step, p.total, p.width, p.jpeg[:2])),
            finished=finished,
        ),
    )
    assert job.wait(120) and job.status == "succeeded", job.error
    assert delivered.wait(30)
    base, refiner = job.generation.plan.base_steps, job.generation.plan.refiner_steps
    expected = [("base", s, base) for s in range(2, base + 1, 2)]
    expected += [("base", base, base)] if base % 2 else []
    expected += [("refiner", s, refiner) for s in range(2, refiner + 1, 2)]
    expected += [("refiner", refiner, refiner)] if refiner % 2 else []
    assert [e[:3] for e in events[:-1]] == expected and events[-1] == ("finished",)
    assert {e[3:] for e in events[:-1]} == {(SIZE // 8, b"\xff\xd8")}  # JPEGs, latent-sized
    assert pixels(job.result()) == fresh(request)  # previews on or off: the same pixels
