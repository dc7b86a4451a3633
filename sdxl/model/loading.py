"""Loading the models for serving: the weights read once (`sdxl.model.pipelines`), then the fast
path applied (TF32, channels-last, fused QKV, torch.compile). The warm-up generation it asks
for (`Models.warmup_shapes`) is run by the engine, on the thread that runs every job."""

from __future__ import annotations

import logging
import time

from sdxl.model import fast
from sdxl.model.compiled import Compiled
from sdxl.model.pipelines import Models, read_models
from sdxl.settings import Runtime

log = logging.getLogger(__name__)


def load_models(runtime: Runtime) -> Models:
    """Load base and refiner from `runtime.weights_dir` once, sharing what SDXL shares, then
    apply the fast path."""
    started = time.perf_counter()
    models = read_models(runtime)
    switches = _apply_fast_path(models, runtime, models.device.type == "cuda")
    log.info(
        "loaded SDXL base and refiner from %s on %s in %s in %.1f s (%s)",
        runtime.weights_dir.resolve(),
        models.device,
        str(models.dtype).removeprefix("torch."),
        time.perf_counter() - started,
        ", ".join(switches) or "no fast-path switches",
    )
    return models


def _apply_fast_path(models: Models, runtime: Runtime, cuda: bool) -> list[str]:
    base, refiner = models.base, models.refiner
    switches = []
    if runtime.switch("tf32", cuda):
        fast.set_tf32(True)
        switches.append("TF32")
    if runtime.switch("channels_last", cuda):
        fast.to_channels_last(base.unet, refiner.unet, base.vae)
        models.channels_last = True
        switches.append("channels-last")
    if runtime.switch("fuse_qkv", cuda):
        models.fused = {"base": fast.fuse_qkv(base.unet), "refiner": fast.fuse_qkv(refiner.unet)}
        switches.append("fused QKV")
    if runtime.compile:
        models.compiled = Compiled(
            models,
            runtime.compile_shapes,
            backend=runtime.compile_backend,
            cache=runtime.compile_cache,
        )
        switches.append(f"compiled for {runtime.compile_shapes}")
    if runtime.compile or runtime.switch("warmup", cuda):
        # Compiled modules serve only what the warm-up ran, so compiling implies warming up.
        # The engine runs it on its GPU thread, before it takes the first job.
        models.warmup_shapes = runtime.compile_shapes if runtime.compile else ((1024, 1024),)
    return switches
