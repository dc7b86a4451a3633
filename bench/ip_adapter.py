"""IP-Adapter, measured: the engine's seconds per step with an IP-Adapter (`plus`, one reference
image, scale 0.6) against a plain request and against diffusers' own `StableDiffusionXLPipeline`
with the same adapter loaded by `load_ip_adapter` over the same loaded modules, in the same run,
with the same reference image, seed and steps. Requests are txt2img at --size, K_EULER,
--steps steps, no refiner, safety checker and watermark off.

diffusers' side, honestly: `load_ip_adapter` changes the UNet it loads into for good (IP
processors, an image projection, `encoder_hid_dim_type`). So each of its rounds builds a
pipeline over the engine's modules (the base's, and the engine's ViT-H image encoder and
feature extractor, as it shares the UNet), calls `load_ip_adapter` on the adapter's file
(diffusers reads and converts it itself: its own projection and processors), times the
request, then `unload_ip_adapter()` and puts the engine's processors, projection and config
back, as `sdxl/control/ip_adapter.py` does after a job. The load is outside the timed
intervals. One copy of the UNet: a second full-size one would not fit the CPU machine.

Each UNet forward call is timed (a pre-hook on the base UNet, CUDA synchronized, as
bench/hires.py does): a row's seconds per step is the median interval between consecutive
call starts, the first interval (first calls of a shape, the adapter's first included) left out
as the warm-up. The rows run interleaved round by round (medians over rounds), so that a
change in the machine's speed hits them alike.

The adapter and its encoder are SDXL_WEIGHTS_DIR's ip_adapter/ (h94's layout); where a folder
lacks them, full-size random ones are written there first with `weights random-full`'s own
builders (the ViT-H encoder, 632M parameters, and the three adapters, fp16).

    python bench/ip_adapter.py --weights DIR [--size 512] [--steps 6] [--rounds 1]

Writes bench/results/ip-adapter-full-<cpu|cuda>.json (ip-adapter-tiny.json without --weights,
at 256). Target: ours / diffusers' at most 1.02x.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch
from common import (
    generation,
    loaded_engine,
    median,
    rss_peak_bytes,
    safetensors_entries,
    weights_or_tiny,
    write,
)
from hires import timed_rounds
from PIL import Image, ImageDraw

TARGET = 1.02
ADAPTER = "plus"
SCALE = 0.6
ENCODER_SEED = 10  # as weights random-full writes it
PLAIN = "plain (no IP-Adapter)"
OURS = f"ours, {ADAPTER}"
THEIRS = f"diffusers, {ADAPTER} (load_ip_adapter)"
ROWS = {PLAIN: "ours", OURS: "ours", THEIRS: "diffusers"}  # row -> whose path
DIFFUSERS_SIDE = (
    "a StableDiffusionXLPipeline over the engine's loaded modules (its UNet, text encoders, VAE, "
    "ViT-H image encoder and feature extractor); per round load_ip_adapter(the adapter's file, "
    "image_encoder_folder=None) builds diffusers' own projection and IP processors in that UNet, "
    "the request is timed, then unload_ip_adapter() and the engine's processors, projection and "
    "config are put back (outside the timed intervals); one UNet copy"
)


# ---- the adapter ----------------------------------------------------------------------------
def ensure_ip_adapters(weights: Path) -> str:
    """ip_adapter/ under `weights` (the encoder and the three adapters): where it came from."""
    from sdxl.builders import random_full
    from sdxl.builders import sdxl_configs as configs
    from sdxl.builders.tiny_ip_adapter import adapter_file, encoder_folder

    encoder = encoder_folder(weights)
    if not (encoder / "config.json").is_file():
        module_fn, config_fn = random_full._clip_vision(configs.IMAGE_ENCODER)
        random_full._write(encoder, "model.safetensors", module_fn, ENCODER_SEED, config_fn)
    if adapter_file(weights, ADAPTER).is_file():
        return "found in the weights folder"
    random_full._ip_adapters(weights, print)  # write_ip_adapters at full size, fp16
    return "built by bench/ip_adapter.py with weights random-full's builders (random, fp16)"


def resident_bytes(engine, weights: Path) -> dict:
    """The adapter's resident parts (its projection and IP processors) against its file."""
    from sdxl.builders.tiny_ip_adapter import adapter_file
    from sdxl.model import fast

    adapter = engine.runner.guides.ip_adapters.adapter(ADAPTER, engine.models.base.unet)
    modules = (adapter.projection, *adapter.processors.values())
    held = fast.parameter_bytes(*modules)
    dtypes, elements = safetensors_elements(adapter_file(weights, ADAPTER))
    itemsize = next(adapter.projection.parameters()).element_size()
    return {
        "resident_bytes": held,
        "file_dtypes": dtypes,
        "file_elements": elements,
        "file_elements_at_resident_dtype_bytes": elements * itemsize,
        "ratio": held / (elements * itemsize),  # the tiny's files are fp32, the full's fp16
        "target": 1.0,
    }


def safetensors_elements(path: Path) -> tuple[list[str], int]:
    """The dtypes and the element count of the tensors in one safetensors file (its header)."""
    entries = safetensors_entries(path)
    count = sum(math.prod(entry["shape"]) for entry in entries)
    return sorted({entry["dtype"] for entry in entries}), count


# ---- the requests ---------------------------------------------------------------------------
def reference_image(size: int) -> Image.Image:
    """A picture of shapes on a gradient: the image prompt."""
    ramp = torch.linspace(0, 255, size).to(torch.uint8)
    image = Image.fromarray((ramp[None, :] // 2 + ramp[:, None] // 2).numpy()).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x, y, r = (53 * i) % size, (71 * i + 10) % size, size // 5
        draw.ellipse((x, y, x + r, y + r), fill=(200, 40 * i % 255, 60), outline="black")
    return image


def request(size: int, steps: int, images: tuple = ()):
    adapter = {"ip_adapter_model": ADAPTER, "ip_adapter_scale": SCALE}
    return generation(size, steps, ip_adapter_images=images, **adapter)


def diffusers_call(engine, weights: Path, req) -> None:
    """diffusers' own IP-Adapter pipeline over the engine's modules (see the module's doc), the
    UNet exactly as the engine had it afterwards."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from sdxl.config import IP_ADAPTER_DIR, IP_ADAPTER_MODELS, IP_ADAPTER_SUBFOLDER
    from sdxl.control.ip_adapter import unet_kept

    models = engine.models
    unet = models.base.unet
    encoder = engine.runner.guides.ip_adapters.components()  # the engine's, loaded once
    scheduler = EulerDiscreteScheduler.from_config(models.base.scheduler.config)
    pipe = StableDiffusionXLPipeline(
        **{**models.base.components, **encoder, "scheduler": scheduler}, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    with unet_kept(unet):  # the engine's processors, projection and config back after it
        try:
            pipe.load_ip_adapter(
                str(weights / IP_ADAPTER_DIR),
                subfolder=IP_ADAPTER_SUBFOLDER,
                weight_name=IP_ADAPTER_MODELS[ADAPTER],
                image_encoder_folder=None,  # the engine's encoder, passed above
            )
            pipe.set_ip_adapter_scale(SCALE)
            pipe(
                prompt=req.prompt,
                width=req.width,
                height=req.height,
                num_inference_steps=req.num_inference_steps,
                guidance_scale=req.guidance_scale,
                ip_adapter_image=list(req.ip_adapter_images),
                generator=torch.Generator("cpu").manual_seed(req.seed),
                output_type="np",
            )
        finally:
            pipe.unload_ip_adapter()


def measure(engine, weights: Path, size: int, steps: int, rounds: int) -> dict:
    """Each row's median seconds per step over rounds, the ratios, and the resident bytes."""
    if steps < 3:
        raise SystemExit("--steps must be at least 3 (the first interval is the warm-up)")
    images = (reference_image(size),)
    resident = resident_bytes(engine, weights)
    calls = {
        PLAIN: lambda: engine.run(request(size, steps)),
        OURS: lambda: engine.run(request(size, steps, images)),
        THEIRS: lambda: diffusers_call(engine, weights, request(size, steps, images)),
    }
    timed = timed_rounds(calls, engine.models.base.unet, rounds)
    took = {name: median(row["each_round"]) for name, row in timed.items()}
    rows = {
        name: {
            "seconds_per_step": took[name],
            "each_round": timed[name]["each_round"],
            "unet_forward_seconds": median(timed[name]["inside"]),
            "unet_calls": timed[name]["unet_calls"],
            "path": ROWS[name],
        }
        for name in ROWS
    }
    return {
        "rows": rows,
        "ours_over_diffusers": took[OURS] / took[THEIRS],
        "target": TARGET,
        "over_plain": took[OURS] / took[PLAIN],
        "diffusers_side": DIFFUSERS_SIDE,
        "resident": resident,
    }


def report(found: dict) -> None:
    print(f"{'row':40} {'s/step':>8} {'in UNet':>8} {'UNet calls':>11}")
    for name, row in found["rows"].items():
        print(
            f"{name:40} {row['seconds_per_step']:8.3f} {row['unet_forward_seconds']:8.3f} "
            f"{row['unet_calls']:11d}"
        )
    ratio, cost = found["ours_over_diffusers"], found["over_plain"]
    print(f"IP-Adapter ({ADAPTER}): ours / diffusers' {ratio:.3f}x (target <= {TARGET})")
    print(f"IP-Adapter ({ADAPTER}): {cost:.3f}x plain")
    resident = found["resident"]
    held, ratio = resident["resident_bytes"], resident["ratio"]
    on_file = resident["file_elements_at_resident_dtype_bytes"]
    print(
        f"ip_adapter {ADAPTER}: resident {held / 2**30:.3f} GiB, file tensors "
        f"{on_file / 2**30:.3f} GiB, {ratio:.4f}x (target 1.00x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--note", default="", help="said in the record (how it was run)")
    args = parser.parse_args()
    weights = weights_or_tiny(args.weights, Path(tempfile.mkdtemp()))
    size = args.size if args.weights else 256
    built = ensure_ip_adapters(weights) if args.weights else "weights tiny's (random)"
    load_before = os.getloadavg()
    engine = loaded_engine(weights)
    found = measure(engine, weights, size, args.steps, args.rounds)
    load_after = os.getloadavg()
    device, dtype = engine.models.device.type, str(engine.models.dtype)
    engine.close()
    report(found)
    record = {
        "weights": str(args.weights or "tiny"),
        "ip_adapter": {"model": ADAPTER, "images": 1, "scale": SCALE, "weights": built},
        "size": size,
        "steps": args.steps,
        "timed_intervals_per_request": args.steps - 2,
        "scheduler": "K_EULER",
        "rounds": args.rounds,
        "device": device,
        "dtype": dtype,
        "host_peak_rss_bytes": rss_peak_bytes(),
        "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        **({"note": args.note} if args.note else {}),
        **found,
    }
    write(f"ip-adapter-full-{device}" if args.weights else "ip-adapter-tiny", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
