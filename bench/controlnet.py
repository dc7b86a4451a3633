"""ControlNet, measured: the engine's seconds per step with one ControlNet (canny) and with two
(canny + depth) against diffusers' own `StableDiffusionXLControlNetPipeline` (a
`MultiControlNetModel` for two) over the same loaded modules, in the same run, with the same
control maps, seed and steps; and the cost of control over a plain request. Requests are
txt2img at --size, K_EULER, --steps steps, no refiner, safety checker and watermark off.

Each UNet forward call is timed (a pre-hook on the base UNet, CUDA synchronized, as
bench/hires.py does): a row's seconds per step is the median interval between consecutive
call starts, the first interval (first calls of a shape, the ControlNets' included) left out
as the warm-up. The rows run interleaved round by round (medians over rounds), so that a
change in the machine's speed hits them alike.

Resident bytes per control model: the loaded module's parameter bytes (`fast.parameter_bytes`)
and, on CUDA, the device memory it took when it loaded, against the tensor bytes of its
safetensors file (target 1.00x).

The ControlNets are SDXL_WEIGHTS_DIR's controlnet/canny and controlnet/depth; where a folder
lacks one, a full-size random one is written there first, from the base UNet's config
(`ControlNetModel.from_unet`'s layout, diffusers' SDXL ControlNet), with seeded non-zero random
weights (the zero convolutions too) in fp16 safetensors, as `weights random-full` writes its
modules: the engine loads it like a downloaded one.

    python bench/controlnet.py --weights DIR [--size 512] [--steps 6] [--rounds 1]

Writes bench/results/controlnet-full-<cpu|cuda>.json (controlnet-tiny.json without --weights,
at 256). Target: ours / diffusers' at most 1.02x, with one ControlNet and with two.
"""

from __future__ import annotations

import argparse
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
SEEDS = {"canny": 3401, "depth": 3402}  # controlnet/<name> built with these when missing
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PLAIN = "plain (no ControlNet)"
ROWS = {  # row -> (the ControlNets it runs, whose path)
    PLAIN: (0, "ours"),
    "ours, canny": (1, "ours"),
    "diffusers, canny": (1, "diffusers"),
    "ours, canny + depth": (2, "ours"),
    "diffusers, canny + depth (MultiControlNet)": (2, "diffusers"),
}


# ---- the control models ---------------------------------------------------------------------
def ensure_controlnets(weights: Path) -> dict[str, str]:
    """controlnet/canny and controlnet/depth under `weights`: where each came from."""
    from sdxl.config import CONTROLNET_DIR

    found = {}
    for name, seed in SEEDS.items():
        folder = weights / CONTROLNET_DIR / name
        if (folder / "config.json").is_file():
            found[name] = "found in the weights folder"
            continue
        count = build_controlnet(weights, folder, seed)
        found[name] = f"built by bench/controlnet.py: random, seed {seed}, {count / 1e9:.3f} B"
    return found


def build_controlnet(weights: Path, folder: Path, seed: int) -> int:
    """A random ControlNet for the base UNet in `folder` (config.json and fp16 safetensors),
    declared on the meta device (nothing materialised); its parameter count."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from sdxl.builders.random_full import random_state
    from sdxl.config import BASE_DIR

    config = UNet2DConditionModel.load_config(weights / BASE_DIR / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state(controlnet, seed)  # weights N(0, 0.5/sqrt(fan_in)): none zero
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    controlnet.save_config(folder)
    return sum(t.numel() for t in state.values())


def file_tensor_bytes(folder: Path) -> int:
    """The bytes of the tensors in `folder`'s safetensors files (read from their headers)."""
    return sum(
        end - start
        for path in folder.glob("*.safetensors")
        for (start, end) in (entry["data_offsets"] for entry in safetensors_entries(path))
    )


def resident_bytes(engine, units) -> dict:
    """Each unit's model loaded through the engine's ResidentControls, one at a time: its
    parameter bytes (and the device memory it took on CUDA) against its file's tensor bytes."""
    from sdxl.model import fast

    controls, out = engine.runner.guides.controls, {}
    for unit in units:
        model = engine.runner.guides.control_library.resolve(unit)
        cuda = engine.models.device.type == "cuda"
        before = torch.cuda.memory_allocated() if cuda else 0
        (module,) = controls.for_units((unit,))
        delta = torch.cuda.memory_allocated() - before if cuda else None
        on_file = file_tensor_bytes(model.folder)
        held = fast.parameter_bytes(module)
        out[model.name] = {
            "class": type(module).__name__,
            "parameters": sum(p.numel() for p in module.parameters()),
            "dtype": str(next(module.parameters()).dtype),
            "resident_bytes": held,
            "device_memory_delta_bytes": delta,
            "file_tensor_bytes": on_file,
            "ratio": held / on_file,
            "device_ratio": None if delta is None else delta / on_file,
            "target": 1.0,
        }
    return out


# ---- the requests ---------------------------------------------------------------------------
def control_units(size: int) -> tuple:
    """A canny unit on a picture of shapes and a depth unit given a ready map (a gradient)."""
    from sdxl.inputs.control_units import ControlUnit

    shapes = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(shapes)
    for i in range(8):
        x, y, r = (37 * i) % size, (61 * i + 20) % size, size // 6
        draw.ellipse((x, y, x + r, y + r), fill=(40 * i % 255, 90, 160), outline="black")
        draw.rectangle((y // 2, x // 2, y // 2 + r, x // 2 + r // 2), outline="black", width=3)
    ramp = torch.linspace(0, 255, size).to(torch.uint8)
    depth = Image.fromarray((ramp[None, :] // 2 + ramp[:, None] // 2).numpy()).convert("RGB")
    return (
        ControlUnit("canny", image=shapes, conditioning_scale=0.75),
        ControlUnit("depth", image=depth, preprocessor="none", conditioning_scale=0.5),
    )


def request(size: int, steps: int, units: tuple = ()):
    return generation(size, steps, controls=units)


def diffusers_call(models, req, controlnets: list, maps: list) -> None:
    """diffusers' own ControlNet pipeline over the engine's loaded modules (the base's and the
    resident control models), the same maps, scales, seed and steps."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline
    from diffusers.models.controlnets import MultiControlNetModel

    one = len(controlnets) == 1
    scheduler = EulerDiscreteScheduler.from_config(models.base.scheduler.config)
    pipe = StableDiffusionXLControlNetPipeline(
        **{**models.base.components, "scheduler": scheduler},
        controlnet=controlnets[0] if one else MultiControlNetModel(controlnets),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    scales = [unit.conditioning_scale for unit in req.controls]
    pipe(
        prompt=req.prompt,
        width=req.width,
        height=req.height,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        image=maps[0] if one else maps,
        controlnet_conditioning_scale=scales[0] if one else scales,
        generator=torch.Generator("cpu").manual_seed(req.seed),
        output_type="np",
    )


def measure(engine, size: int, steps: int, rounds: int) -> dict:
    """Each row's median seconds per step over rounds, the ratios, and the resident bytes."""
    if steps < 3:
        raise SystemExit("--steps must be at least 3 (the first interval is the warm-up)")
    units = control_units(size)
    resident = resident_bytes(engine, units)
    controlnets = engine.runner.guides.controls.for_units(units)  # the engine's own modules
    maps = [engine.detect_control(unit, size, size) for unit in units]  # as a job makes them

    def runner(count: int, path: str):
        req = request(size, steps, units[:count])
        if path == "ours":
            return lambda: engine.run(req)
        return lambda: diffusers_call(engine.models, req, controlnets[:count], maps[:count])

    calls = {name: runner(*row) for name, row in ROWS.items()}
    timed = timed_rounds(calls, engine.models.base.unet, rounds)
    took = {name: median(row["each_round"]) for name, row in timed.items()}
    rows = {
        name: {
            "seconds_per_step": took[name],
            "each_round": timed[name]["each_round"],
            "unet_forward_seconds": median(timed[name]["inside"]),
            "unet_calls": timed[name]["unet_calls"],
            "controlnets": ROWS[name][0],
            "path": ROWS[name][1],
        }
        for name in ROWS
    }
    one, two = "ours, canny", "ours, canny + depth"
    return {
        "rows": rows,
        "ours_over_diffusers": {
            "1 ControlNet": took[one] / took["diffusers, canny"],
            "2 ControlNets": took[two] / took["diffusers, canny + depth (MultiControlNet)"],
            "target": TARGET,
        },
        "over_plain": {
            "1 ControlNet": took[one] / took[PLAIN],
            "2 ControlNets": took[two] / took[PLAIN],
        },
        "resident": resident,
    }


def report(found: dict) -> None:
    print(f"{'row':44} {'s/step':>8} {'in UNet':>8} {'UNet calls':>11}")
    for name, row in found["rows"].items():
        print(
            f"{name:44} {row['seconds_per_step']:8.3f} {row['unet_forward_seconds']:8.3f} "
            f"{row['unet_calls']:11d}"
        )
    for count in ("1 ControlNet", "2 ControlNets"):
        ratio, cost = found["ours_over_diffusers"][count], found["over_plain"][count]
        print(f"{count}: ours / diffusers' {ratio:.3f}x (target <= {TARGET}), {cost:.2f}x plain")
    for name, held in found["resident"].items():
        delta = held["device_memory_delta_bytes"]
        on_device = "" if delta is None else f", device memory +{delta / 2**30:.3f} GiB"
        print(
            f"controlnet/{name}: resident {held['resident_bytes'] / 2**30:.3f} GiB{on_device}, "
            f"file tensors {held['file_tensor_bytes'] / 2**30:.3f} GiB, {held['ratio']:.4f}x "
            "(target 1.00x)"
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
    built = ensure_controlnets(weights)
    engine = loaded_engine(weights)
    found = measure(engine, size, args.steps, args.rounds)
    device, dtype = engine.models.device.type, str(engine.models.dtype)
    engine.close()
    report(found)
    record = {
        "weights": str(args.weights or "tiny"),
        "controlnets": built,
        "size": size,
        "steps": args.steps,
        "timed_intervals_per_request": args.steps - 2,
        "scheduler": "K_EULER",
        "rounds": args.rounds,
        "device": device,
        "dtype": dtype,
        "host_peak_rss_bytes": rss_peak_bytes(),
        **({"note": args.note} if args.note else {}),
        **found,
    }
    write(f"controlnet-full-{device}" if args.weights else "controlnet-tiny", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
