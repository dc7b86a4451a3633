"""torch.compile that never recompiles (SDXL_COMPILE=1): after the warm-up, no request makes a
new graph, whatever its scheduler (int64 or float32 timesteps), its prompt's length (chunks of
77 tokens), its size, batch or guidance, its trained weights or its feature cache; what was
compiled gives the eager modules' pixels. Graphs are counted with torch._dynamo's own counters;
the "eager" backend traces exactly the graphs Inductor would compile, without generating code,
so this runs in seconds on the CPU (Inductor itself: the slow tier and bench/device.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runtime_for_tests, start_engine

from sdxl.config import SCHEDULERS
from sdxl.engine import Engine, EngineSettings
from sdxl.inputs.request import Request
from sdxl.model.loading import load_models

SIZE = 256
LONG_PROMPT = " ".join(["a photo of a cat with a hat in the studio"] * 12)  # over 77 tokens


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def request(**kw) -> Request:
    base = dict(prompt="a photo of a cat", width=SIZE, height=SIZE, num_inference_steps=4, seed=5)
    return Request(**{**base, **kw})


def pixels(engine, req: Request) -> np.ndarray:
    return np.stack([np.asarray(im) for im in engine.run(req).images])


@pytest.fixture(scope="module")
def compiled(tiny_weights):
    torch._dynamo.reset()
    runtime = runtime_for_tests(tiny_weights)
    runtime = type(runtime)(
        **{
            **runtime.__dict__,
            "compile": True,
            "compile_shapes": ((SIZE, SIZE),),
            "compile_backend": "eager",
        }
    )
    engine = Engine(runtime, EngineSettings(), models=load_models(runtime))
    engine.load()  # the warm-up compiles, on the GPU thread
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def eager(tiny_weights):
    engine = start_engine(tiny_weights)
    yield engine
    engine.close()


def test_the_warm_up_compiled_each_module_once(compiled):
    modules = compiled.models.compiled
    assert graphs() == 3  # base UNet, refiner UNet, VAE decoder: one graph each
    for sealed in modules.sealed:
        assert sealed.sealed and len(sealed.warmed) == 1


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs_the_compiled_graphs(compiled, eager, scheduler):
    """DDIM, DPM++, PNDM, LCM and TCD give the UNet int64 timesteps, Euler and Heun float32:
    one graph serves them all, with the eager pixels."""
    before, eager_calls = graphs(), compiled.models.compiled.eager_calls
    req = request(scheduler=scheduler, refine="expert_ensemble_refiner", num_inference_steps=6)
    got = pixels(compiled, req)
    assert graphs() == before
    assert compiled.models.compiled.eager_calls == eager_calls  # every call compiled
    np.testing.assert_array_equal(got, pixels(eager, req))


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": LONG_PROMPT},  # 77 x 2 tokens of conditioning
        {"width": 320},  # a size not compiled
        {"num_outputs": 2},  # a batch
        {"guidance_scale": 1.0},  # guidance off: a batch of one through the UNet
        {"cache_interval": 2},  # DeepCache patches the eager modules
        {"lora_name": "offset", "lora_scale": 0.8},  # a LoRA's layers in the base UNet
        {"refine": "base_image_refiner", "guidance_scale_refiner": 1.0},
    ],
    ids=["long-prompt", "other-size", "batch", "no-guidance", "cache", "lora", "refiner-cfg-1"],
)
def test_what_was_not_compiled_runs_eager_and_never_recompiles(compiled, eager, changes):
    before = graphs()
    req = request(**changes)
    got = pixels(compiled, req)
    assert graphs() == before  # no new graph: no request waits for a compile
    np.testing.assert_array_equal(got, pixels(eager, req))


def test_after_a_lora_job_plain_jobs_run_compiled_again(compiled, eager):
    """With SDXL_COMPILE=1 a LoRA's layers leave the base UNet after its job (no resident
    LoRA by default), so the other tenants keep the compiled base."""
    pixels(compiled, request(lora_name="offset"))
    assert compiled.runner.resident.stats()["loras"] == 0
    before, eager_calls = graphs(), compiled.models.compiled.eager_calls
    got = pixels(compiled, request(seed=9))
    assert graphs() == before and compiled.models.compiled.eager_calls == eager_calls
    np.testing.assert_array_equal(got, pixels(eager, request(seed=9)))
