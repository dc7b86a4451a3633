"""CPU dtype: the product's CPU default (SDXL_DTYPE=auto) against diffusers' float32 default.

1. One full-size base UNet step at 512x512 (batch 2: guidance on) in float32, in the product's
   dtype, and in the product's dtype with channels-last.
2. A whole 512x512 generation (base only, safety checker and watermark off): the product's
   engine with its defaults against diffusers' StableDiffusionXLPipeline in float32, same
   arguments and seed; and how far apart their pixels are.
Each measurement runs in a process of its own (float32 base and the product's models do not fit
in 24 GB together), after a warm-up call; the processes are interleaved in rounds (each side
once a round, in turn) and the medians over the rounds compared.

    python bench/cpu_dtype.py --weights DIR [--rounds 3]   # DIR: sdxl weights random-full

Target: product / diffusers float32 time <= 0.5 on the whole generation. Writes
bench/results/cpu-dtype.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import loaded_engine, median, write

PROMPT = "A studio portrait photo of a cat"


def unet_step(weights: Path, dtype: str, channels_last: bool) -> float:
    from diffusers import UNet2DConditionModel

    torch_dtype = getattr(torch, dtype)
    unet = UNet2DConditionModel.from_pretrained(weights / "base" / "unet", torch_dtype=torch_dtype)
    unet.requires_grad_(False).eval()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    sample = torch.randn(2, 4, 64, 64, dtype=torch_dtype)
    text = torch.randn(2, 77, 2048, dtype=torch_dtype)
    added = {
        "text_embeds": torch.randn(2, 1280, dtype=torch_dtype),
        "time_ids": torch.tensor([[512, 512, 0, 0, 512, 512]] * 2, dtype=torch_dtype),
    }
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first call warms up
            started = time.perf_counter()
            unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added)
            times.append(time.perf_counter() - started)
    return times[-1]


def product_generation(weights: Path, steps: int) -> tuple[float, bytes, str]:
    from sdxl.inputs.request import Request

    engine = loaded_engine(weights)
    request = Request(
        prompt=PROMPT,
        width=512,
        height=512,
        num_inference_steps=steps,
        seed=1,
        apply_watermark=False,
        disable_safety_checker=True,
    )
    times, image = [], None
    for _ in range(2):  # the first call warms up
        started = time.perf_counter()
        image = engine.run(request).images[0]
        times.append(time.perf_counter() - started)
    engine.close()
    return times[-1], _png(image), str(engine.models.dtype)


def diffusers_generation(weights: Path, steps: int) -> tuple[float, bytes, str]:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        weights / "base", torch_dtype=torch.float32, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    times, image = [], None
    for _ in range(2):  # the first call warms up
        started = time.perf_counter()
        image = pipe(
            prompt=PROMPT,
            width=512,
            height=512,
            num_inference_steps=steps,
            generator=[torch.Generator("cpu").manual_seed(1)],
        ).images[0]
        times.append(time.perf_counter() - started)
    return times[-1], _png(image), "torch.float32"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def child(args) -> None:
    """One measurement in this process; JSON on stdout."""
    if args.child == "unet":
        seconds = unet_step(args.weights, args.dtype, args.channels_last)
        print(json.dumps({"seconds": seconds}))
        return
    run = product_generation if args.child == "product" else diffusers_generation
    seconds, png, dtype = run(args.weights, args.steps)
    (args.out).write_bytes(png)
    print(json.dumps({"seconds": seconds, "dtype": dtype}))


def measure(*extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("unet", "product", "diffusers"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    from sdxl.model.fast import auto_dtype

    product_dtype = str(auto_dtype(torch.device("cpu"))).removeprefix("torch.")
    weights = ["--weights", str(args.weights)]
    unet_runs = {
        "float32": ["--dtype", "float32"],
        product_dtype: ["--dtype", product_dtype],
        f"{product_dtype} channels-last": ["--dtype", product_dtype, "--channels-last"],
    }
    folder = Path(args.weights)
    sides = ("diffusers", "product")
    seen: dict = {name: [] for name in [*unet_runs, *sides]}
    generation: dict = {}
    for round_number in range(args.rounds):  # interleaved: each measurement once a round
        for name, extra in unet_runs.items():
            seen[name].append(measure(*weights, "--child", "unet", *extra)["seconds"])
        for side in sides:
            out = folder / f".bench-{side}.png"
            found = measure(
                *weights, "--child", side, "--steps", str(args.steps), "--out", str(out)
            )
            seen[side].append(found["seconds"])
            generation[side] = {"dtype": found["dtype"], "image": out}
        print(
            f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seen.items())
        )
    unet = {name: median(seen[name]) for name in unet_runs}
    for name, seconds in unet.items():
        print(f"UNet step at 512x512, {name:26} {seconds:6.2f} s  x{unet['float32'] / seconds:.2f}")
    for side in sides:
        generation[side]["seconds"] = median(seen[side])
    from PIL import Image

    a, b = (np.asarray(Image.open(generation[s]["image"]), dtype=np.int16) for s in generation)
    diff = np.abs(a - b)
    speedup = generation["diffusers"]["seconds"] / generation["product"]["seconds"]
    print(
        f"512x512 x {args.steps} steps: diffusers float32 "
        f"{generation['diffusers']['seconds']:.1f} s, product ({generation['product']['dtype']}) "
        f"{generation['product']['seconds']:.1f} s: {speedup:.2f} x faster (target >= 2)"
    )
    print(f"pixels apart: mean {diff.mean():.2f}, max {diff.max()} of 255")
    for side in generation.values():
        side.pop("image").unlink()
    write(
        "cpu-dtype",
        {
            "steps": args.steps,
            "product_dtype": product_dtype,
            "unet_step_s": unet,
            "rounds": args.rounds,
            "unet_step_s_each_round": {k: seen[k] for k in unet_runs},
            "generation_s": {k: v["seconds"] for k, v in generation.items()},
            "generation_s_each_round": {k: seen[k] for k in sides},
            "speedup": speedup,
            "pixel_difference": {"mean": float(diff.mean()), "max": int(diff.max())},
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
