"""On a CUDA GPU: the default dtype (float16) runs every mode and stays close to float32.

Skipped without CUDA (CI has none); run it where a GPU is: `python -m pytest -m gpu`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.helpers import pixels

from sdxl.core.generate import generate
from sdxl.core.loading import load_models
from sdxl.core.request import Request
from sdxl.settings import Runtime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
def test_float16_on_cuda_is_close_to_float32(tiny_weights, models, refine):
    gpu = load_models(Runtime(weights_dir=tiny_weights, dtype="auto"))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    req = Request(prompt="a cat", width=256, height=256, num_inference_steps=4, seed=2)
    req = Request(**{**req.__dict__, "refine": refine, "refine_steps": 2})
    on_gpu = pixels(generate(gpu, req).images[0])
    on_cpu = pixels(generate(models, req).images[0])  # CPU generators: same noise
    assert np.abs(on_gpu - on_cpu).mean() < 3
