"""Time generation per refine mode and dtype; print seconds, peak memory and ratios.

For a GPU owner with the real weights:
    SDXL_WEIGHTS_DIR=weights python bench/generate.py --size 1024 --steps 30
On the tiny model (CPU, smoke run):
    SDXL_WEIGHTS_DIR=weights python bench/generate.py --size 256 --steps 4 --dtypes float32

Ratios are against the first dtype's no_refiner run, so they compare on any machine; absolute
seconds only compare on the same device.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from common import sync

from sdxl.config import REFINE_MODES
from sdxl.generate.direct import generate
from sdxl.inputs.request import Request
from sdxl.model.loading import load_models
from sdxl.settings.tree import RuntimeGroup


def time_request(models, req: Request, repeats: int) -> tuple[float, float]:
    """(median seconds, peak CUDA GiB or 0) over `repeats` runs after one warm-up."""
    generate(models, req)
    if models.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        generate(models, req)
        sync()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if models.device.type == "cuda" else 0.0
    return statistics.median(times), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="auto", help="comma-separated SDXL_DTYPE values")
    args = parser.parse_args()
    base = Request(prompt="A studio portrait photo of a cat", seed=1, apply_watermark=False)
    base = dataclasses.replace(
        base, width=args.size, height=args.size, num_inference_steps=args.steps, refine_steps=10
    )
    baseline = None
    print(f"{'dtype':10} {'refine':26} {'seconds':>8} {'ratio':>6} {'peak GiB':>9}")
    for dtype in args.dtypes.split(","):
        models = load_models(dataclasses.replace(RuntimeGroup.read().build(), dtype=dtype))
        for refine in REFINE_MODES:
            seconds, peak = time_request(
                models, dataclasses.replace(base, refine=refine), args.repeats
            )
            baseline = baseline or seconds
            print(f"{dtype:10} {refine:26} {seconds:8.2f} {seconds / baseline:6.2f} {peak:9.2f}")
        del models
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
