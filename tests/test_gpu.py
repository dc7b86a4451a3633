"""On a CUDA GPU: the fast path (float16, TF32, channels-last, fused QKV, warm-up) runs every
mode and stays close to float32 on the CPU.

Skipped without CUDA (CI has none); bench/device.sh runs it where a GPU is, together with the
pixel tests on the GPU (SDXL_TEST_DEVICE=cuda). Tolerances: random tiny weights amplify float16
rounding, so the bound is on the mean difference (3 of 255); the largest difference is written
to SDXL_GPU_REPORT (a JSON file) when that is set, for the record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from support.helpers import pixels

from sdxl.generate.direct import generate
from sdxl.inputs.request import Request
from sdxl.model.loading import load_models
from sdxl.settings import Runtime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MEAN_TOLERANCE = 3.0  # of 255, float16 fast path on the GPU against float32 on the CPU


@pytest.fixture(scope="module")
def fast(tiny_weights):
    """The product's default on a GPU: float16 and every fast-path switch."""
    models = load_models(Runtime(weights_dir=tiny_weights, dtype="auto", device="cuda"))
    assert models.device.type == "cuda" and models.dtype == torch.float16
    return models


@pytest.fixture(scope="module")
def on_cpu(tiny_weights):
    models = load_models(Runtime(weights_dir=tiny_weights, dtype="float32", device="cpu"))
    assert models.device.type == "cpu"
    return models


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
def test_the_fast_path_on_cuda_is_close_to_float32_on_the_cpu(fast, on_cpu, refine):
    req = Request(prompt="a cat", width=256, height=256, num_inference_steps=4, seed=2)
    req = Request(**{**req.__dict__, "refine": refine, "refine_steps": 2})
    gpu = pixels(generate(fast, req).images[0])
    cpu = pixels(generate(on_cpu, req).images[0])  # CPU generators: the same noise on both
    diff = np.abs(gpu - cpu)
    _report(f"fast path vs cpu float32, {refine}", diff)
    assert diff.mean() < MEAN_TOLERANCE


def _report(what: str, diff: np.ndarray) -> None:
    if not os.environ.get("SDXL_GPU_REPORT"):
        return
    path = Path(os.environ["SDXL_GPU_REPORT"])
    found = json.loads(path.read_text()) if path.exists() else {}
    found[what] = {"mean": float(diff.mean()), "max": int(diff.max())}
    path.write_text(json.dumps(found, indent=2))


def test_each_job_reports_its_peak_memory_and_a_failed_one_gives_it_back(fast, monkeypatch):
    from sdxl.engine import Engine

    engine = Engine(Runtime(weights_dir=fast.weights_dir, dtype="auto"), models=fast)
    engine.load()
    try:
        request = Request(prompt="a cat", width=256, height=256, num_inference_steps=3, seed=1)
        job = engine.submit(request)
        assert job.wait(120) and job.status == "succeeded"
        assert job.peak_device_bytes > torch.cuda.memory_allocated() // 2
        assert "peak GPU memory" in job.logs[-1]
        held = torch.cuda.memory_allocated()
        unet = fast.base.unet

        def out_of_memory(sample, *args, **kwargs):
            kept = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")  # 64 MB of "activations"
            kept.fill_(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        monkeypatch.setattr(unet, "forward", out_of_memory)
        failed = engine.submit(request)
        assert failed.wait(120) and failed.outcome.kind == "out_of_memory"
        monkeypatch.undo()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= held  # the 64 MB died with the job
    finally:
        engine.close()
