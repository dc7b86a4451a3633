"""Overhead: the product's generation path against the bare diffusers call, same arguments.

The product's path is what the predictor and the APIs call: a job through the engine
(preparation, the lock, per-job pipelines and schedulers, post-processing) and the output
step (encoding with metadata). The bare path is diffusers' own pipeline called on the same
loaded modules plus a PIL save at the same PNG compression level: like with like. Runs are
interleaved, medians compared, for each refine mode, with the safety checker and the watermark
off on both sides; each of those two is then timed on its own, and PNG encoding at 1024x1024 at
each compression level (what the product's level saves, on its own line).

    python bench/overhead.py --weights weights --size 1024 --steps 30     # a GPU, real weights
    python bench/overhead.py                                              # tiny model, CPU

Target: product / bare <= 1.02; previews every step / none <= 1.01 (`--previews-only` measures
just that row and adds it to the record). Writes bench/results/overhead-<tiny|full>.json.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from common import RESULTS, loaded_engine, median, timed, weights_or_tiny, write
from PIL import Image

from sdxl.config import BASE_IMAGE_REFINER_STRENGTH, REFINE_MODES
from sdxl.engine import Engine
from sdxl.images.outputs import PNG_COMPRESS_LEVEL, encode_outputs
from sdxl.inputs.request import Request
from sdxl.inputs.scheduler_table import refiner_schedule_for

OUTPUT_FORMAT = "png"


def bare_call(models, req: Request):
    """diffusers' pipelines called directly on the same modules: the floor."""
    import diffusers
    import torch

    def generator():
        return [torch.Generator("cpu").manual_seed(req.seed)]

    base = diffusers.StableDiffusionXLPipeline(**models.base.components, add_watermarker=False)
    base.set_progress_bar_config(disable=True)
    common = dict(prompt=req.prompt, num_inference_steps=req.num_inference_steps)
    if req.refine == "no_refiner":
        image = base(**common, width=req.width, height=req.height, generator=generator())
    else:
        refiner = diffusers.StableDiffusionXLImg2ImgPipeline(
            **models.refiner.components, requires_aesthetics_score=True, add_watermarker=False
        )
        refiner.set_progress_bar_config(disable=True)
        ensemble = req.refine == "expert_ensemble_refiner"
        split = {"denoising_end": req.high_noise_frac} if ensemble else {}
        latents = base(
            **common,
            width=req.width,
            height=req.height,
            output_type="latent",
            generator=generator(),
            **split,
        ).images
        if ensemble:
            after = {"denoising_start": req.high_noise_frac}
        else:  # the schedule whose 30% is refine_steps, as the product plans it
            steps = refiner_schedule_for(req.refine_steps, BASE_IMAGE_REFINER_STRENGTH)
            after = {"strength": BASE_IMAGE_REFINER_STRENGTH, "num_inference_steps": steps}
        image = refiner(**{**common, **after}, image=latents, generator=generator())
    buffer = io.BytesIO()
    image.images[0].save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)  # as the product


def product_call(engine: Engine, req: Request, preview_every: int = 0) -> None:
    job = engine.submit(req, preview_every=preview_every)
    encode_outputs(job.result(), OUTPUT_FORMAT, 80, flagged="drop")


def previews_ratio(engine: Engine, req: Request, every: int, repeats: int) -> dict:
    """The product's path with a preview every `every` steps against without, interleaved."""
    product_call(engine, req, every)  # warm the preview thread
    on, off = [], []
    for _ in range(repeats):
        on.append(timed(lambda: product_call(engine, req, every)))
        off.append(timed(lambda: product_call(engine, req)))
    return {
        "every_steps": every,
        "on_s": median(on),
        "off_s": median(off),
        "ratio": median(on) / median(off),
    }


def png_levels(size: int) -> dict:
    """Seconds and bytes of PNG encoding at each zlib level, on a smooth 'photo'."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.stack([127 + 120 * np.sin(x / 37 + y / 53 + p) for p in (0, 2, 4)], -1)
    rgb += np.random.default_rng(0).normal(0, 2, rgb.shape)  # sensor noise, as photos have
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    out = {}
    for level in (None, 1, 3, 6, 9):
        buffer = io.BytesIO()
        options = {} if level is None else {"compress_level": level}
        runs = [timed(lambda o=options: image.save(io.BytesIO(), "PNG", **o)) for _ in range(5)]
        seconds = median(runs)
        image.save(buffer, "PNG", **options)
        out["default" if level is None else f"level {level}"] = {
            "seconds": seconds,
            "bytes": buffer.tell(),
        }
    return out


def bench_request(args, **refine) -> Request:
    """The measured request: watermark and safety checker off (timed apart)."""
    return Request(
        prompt="A studio portrait photo of a cat",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        seed=1,
        apply_watermark=False,
        disable_safety_checker=True,
        **refine,
    )


def previews_only(engine, args, name: str) -> int:
    """The previews row alone, added to the record the last full run wrote."""
    req = bench_request(args)
    product_call(engine, req)  # warm
    found = previews_ratio(engine, req, 1, args.repeats)
    print(
        f"previews every step: on {found['on_s']:.3f} s, off {found['off_s']:.3f} s, "
        f"{found['ratio']:.3f} (target <= 1.01)"
    )
    path = RESULTS / f"{name}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    for key in ("machine", "when", "commit"):
        record.pop(key, None)  # write() sets them anew
    record["previews"] = {**found, "size": args.size, "steps": args.steps}
    write(name, record)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: tiny, built now)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default=",".join(REFINE_MODES))
    parser.add_argument(
        "--previews-only",
        action="store_true",
        help="measure only the previews row and add it to the existing record",
    )
    args = parser.parse_args()
    weights = weights_or_tiny(args.weights)
    engine = loaded_engine(weights)
    models = engine.models
    name = f"overhead-{'tiny' if args.weights is None else 'full'}"
    if args.previews_only:
        return previews_only(engine, args, name)
    record: dict = {"weights": "tiny" if args.weights is None else str(args.weights)}
    record |= {"size": args.size, "steps": args.steps, "dtype": str(models.dtype), "modes": {}}
    print(f"{'refine':26} {'product s':>10} {'bare s':>8} {'ratio':>6}")
    for mode in args.modes.split(","):
        req = bench_request(args, refine=mode, refine_steps=max(1, args.steps // 3))
        product_call(engine, req), bare_call(models, req)  # warm both
        product, bare = [], []
        for _ in range(args.repeats):  # interleaved
            product.append(timed(lambda r=req: product_call(engine, r)))
            bare.append(timed(lambda r=req: bare_call(models, r)))
        p, b = median(product), median(bare)
        record["modes"][mode] = {"product_s": p, "bare_s": b, "ratio": p / b}
        print(f"{mode:26} {p:10.3f} {b:8.3f} {p / b:6.3f}")
        if mode == "no_refiner":
            # A preview every step: the most a live view could ask for (the APIs use 5 or more).
            record["previews"] = previews_ratio(engine, req, 1, args.repeats)
            found = record["previews"]
            print(
                f"{'  previews every step':26} {found['on_s']:10.3f} {found['off_s']:8.3f} "
                f"{found['ratio']:6.3f}  (target <= 1.01)"
            )
    image = engine.run(
        Request(
            prompt="x",
            width=args.size,
            height=args.size,
            num_inference_steps=1,
            seed=1,
            apply_watermark=False,
            disable_safety_checker=True,
        )
    ).images
    from sdxl.generate.watermark import apply_watermark

    record["watermark_s"] = median([timed(lambda: apply_watermark(image)) for _ in range(5)])
    record["safety_checker_s"] = median(
        [timed(lambda: models.safety_checker.check(image)) for _ in range(5)]
    )
    record["png_1024"] = png_levels(1024)
    size = f"{args.size}x{args.size}"
    watermark, checker = record["watermark_s"], record["safety_checker_s"]
    print(f"watermark {watermark:.3f} s, safety checker {checker:.3f} s per image at {size}")
    for level, numbers in record["png_1024"].items():
        print(f"PNG {level:8} {numbers['seconds'] * 1000:7.1f} ms {numbers['bytes']:>10,} bytes")
    ours, default = record["png_1024"][f"level {PNG_COMPRESS_LEVEL}"], record["png_1024"]["default"]
    record["png_level_saving"] = {
        "seconds_saved_per_1024_image": default["seconds"] - ours["seconds"],
        "default_over_ours": default["seconds"] / ours["seconds"],
        "bytes_ours_over_default": ours["bytes"] / default["bytes"],
    }
    saving = record["png_level_saving"]
    print(
        f"the product's PNG level {PNG_COMPRESS_LEVEL} saves "
        f"{saving['seconds_saved_per_1024_image'] * 1000:.0f} ms per 1024x1024 image "
        f"({saving['default_over_ours']:.1f}x faster than PIL's default, "
        f"{saving['bytes_ours_over_default']:.2f}x the bytes)"
    )
    engine.close()
    write(name, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
