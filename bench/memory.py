"""Memory: every weight held once, against the naive load of four pipelines; peak RSS.

1. Resident parameter bytes after setup (distinct tensors: fused projections are views)
   against the bytes of the safetensors loaded, in the same dtype. Target 1.00.
2. The naive load, one `from_pretrained` per pipeline (text-to-image, img2img, inpaint,
   refiner), for comparison: only with --naive (on the tiny model; at full size it does not
   fit in 24 GB).
3. Peak resident memory of the process (VmHWM): during setup, and during one prediction
   (the peak counted again from the resident memory after setup).

    python bench/memory.py --naive                    # tiny model
    python bench/memory.py --weights DIR --size 512   # random-full or real weights

Writes bench/results/memory-<tiny|full>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import loaded_engine, reset_rss_peak, rss_bytes, rss_peak_bytes, weights_or_tiny, write
from safetensors import safe_open

from sdxl.inputs.request import Request
from sdxl.model.fast import parameter_bytes


def safetensors_bytes(root: Path, element_size: int) -> int:
    """Bytes of the model's tensors as the product holds them (`element_size` each)."""
    total = 0
    for path in root.rglob("*.safetensors"):
        if "loras" in path.parts:
            continue
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += int(np.prod(f.get_slice(key).get_shape())) * element_size
    return total


def modules_of(models) -> tuple:
    base = models.base
    return (base.unet, models.refiner.unet, base.vae, base.text_encoder, base.text_encoder_2)


def naive_bytes(root: Path, dtype: torch.dtype) -> int:
    import diffusers

    pipes = [
        getattr(diffusers, name).from_pretrained(root / "base", torch_dtype=dtype)
        for name in (
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        )
    ]
    pipes.append(
        diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
            root / "refiner",
            text_encoder_2=pipes[0].text_encoder_2,
            vae=pipes[0].vae,
            torch_dtype=dtype,
        )
    )
    modules = [m for p in pipes for m in p.components.values() if isinstance(m, torch.nn.Module)]
    return parameter_bytes(*modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: tiny, built now)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--naive", action="store_true", help="also load four pipelines")
    args = parser.parse_args()
    weights = weights_or_tiny(args.weights)
    engine = loaded_engine(weights)
    models = engine.models
    size = torch.empty((), dtype=models.dtype).element_size()
    resident = parameter_bytes(*modules_of(models), models.safety_checker.model)
    files = safetensors_bytes(weights, size)
    after_setup = rss_peak_bytes()
    resident_after_setup = rss_bytes()
    reset_rss_peak()
    engine.run(
        Request(prompt="a cat", width=args.size, height=args.size, num_inference_steps=2, seed=1)
    )
    after_prediction = rss_peak_bytes()
    record = {
        "weights": "tiny" if args.weights is None else str(args.weights),
        "dtype": str(models.dtype),
        "resident_bytes": resident,
        "safetensors_bytes": files,
        "ratio": resident / files,
        "peak_rss_setup": after_setup,
        "rss_after_setup": resident_after_setup,
        "peak_rss_prediction": after_prediction,
        "prediction_size": args.size,
    }
    ratio = resident / files
    print(f"resident {resident / 1e6:,.1f} MB / safetensors {files / 1e6:,.1f} MB = {ratio:.3f}")
    setup_gb, now_gb, prediction_gb = (
        after_setup / 1e9,
        resident_after_setup / 1e9,
        after_prediction / 1e9,
    )
    print(f"peak RSS {setup_gb:.2f} GB during setup ({now_gb:.2f} GB after it), "
          f"{prediction_gb:.2f} GB during a {args.size}x{args.size} prediction")  # fmt: skip
    engine.close()
    if args.naive:
        naive = naive_bytes(weights, models.dtype)
        record["naive_four_pipelines_bytes"] = naive
        print(f"naive four-pipeline load: {naive / 1e6:,.1f} MB = {naive / files:.2f} x")
    write(f"memory-{'tiny' if args.weights is None else 'full'}", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
