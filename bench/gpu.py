"""The GPU benchmark: seconds per 1024x1024 image, throughput, VRAM, setup and compile time.

For a CUDA machine with random-full (`python -m sdxl weights random-full DIR`) or the real
weights. Each configuration runs in its own process:
- plain: float16 and nothing else of the fast path (SDXL_CHANNELS_LAST=0 SDXL_FUSE_QKV=0);
- fast: the default CUDA fast path (channels-last, fused QKV, TF32, warm-up);
- compiled: the fast path plus SDXL_COMPILE=1 for 1024x1024, with an empty Inductor cache
  (cold compile) and again with the cache it filled (warm compile).
For each: setup seconds, seconds per image at 30 and 50 steps for each refine mode (median of
--repeats), images per second at batch 4, peak VRAM; and once the floor of reading the weights
files onto the GPU, for the cold start ratio. The fast configuration also runs the fast modes'
rows at 1024x1024 (bench/fast_modes.py: 30 steps plain, cache_interval 3, 4 Lightning steps;
goal on an H100-class GPU: under 1.2 s plain, under 0.5 s with cache_interval 3) and the hires
fix's (bench/hires.py: 1024 -> 1536, the second pass's seconds per step at most 1.02x a plain
1536x1536 request's) and ControlNet's (bench/controlnet.py at 1024x1024, 20 steps: seconds per
step with one and two ControlNets at most 1.02x diffusers' own ControlNet pipelines over the
same modules; resident bytes per control model, device memory included, 1.00x its file's; the
random ControlNets are written into the weights folder first where it has none) and
IP-Adapter's (bench/ip_adapter.py at 1024x1024, 20 steps: seconds per step with the plus adapter
and one reference image at most 1.02x diffusers' own pipeline with `load_ip_adapter` over the
same modules, and its cost over plain; random ones are written first where the folder has none).

    python bench/gpu.py --weights DIR [--repeats 3] [--configs plain,fast,compiled]

Writes bench/results/gpu.json. Public anchors (1024x1024, 30 steps, guidance on): about
1.47 s on an H100 with TensorRT, 2.43 s on an A100 with the fast-diffusion recipe; goal here:
under 1.2 s per 30-step image on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import median, sync, write
from controlnet import ensure_controlnets
from controlnet import measure as measure_controlnet
from controlnet import report as report_controlnet
from fast_modes import measure, random_lora
from hires import measure as measure_hires
from ip_adapter import ensure_ip_adapters
from ip_adapter import measure as measure_ip_adapter
from ip_adapter import report as report_ip_adapter

MODES = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
CONFIGS = {
    "plain": {"SDXL_CHANNELS_LAST": "0", "SDXL_FUSE_QKV": "0", "SDXL_WARMUP": "1"},
    "fast": {},
    "compiled": {"SDXL_COMPILE": "1", "SDXL_COMPILE_SHAPES": "1024x1024"},
}


def child(weights: Path, repeats: int, steps_list: list[int], fast_modes: bool) -> dict:
    from sdxl.engine import Engine, EngineSettings
    from sdxl.inputs.request import Request
    from sdxl.settings.tree import RuntimeGroup

    loras = Path(tempfile.mkdtemp()) / "loras"
    started = time.perf_counter()
    engine = Engine(RuntimeGroup.read().build(), EngineSettings(lora_dir=loras))
    engine.load()
    sync()
    out: dict = {"setup_s": time.perf_counter() - started, "per_image_s": {}}

    def request(**kw):
        base = dict(prompt="A studio portrait photo of a cat", width=1024, height=1024, seed=1)
        return Request(**{**base, "apply_watermark": True, "refine_steps": 10, **kw})

    torch.cuda.reset_peak_memory_stats()
    for steps in steps_list:
        for mode in MODES:
            req = request(num_inference_steps=steps, refine=mode)
            engine.run(req)
            times = []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                engine.run(req)
                sync()
                times.append(time.perf_counter() - t)
            out["per_image_s"][f"{steps} steps {mode}"] = median(times)
    batch = request(num_inference_steps=30, num_outputs=4)
    engine.run(batch)
    sync()
    t = time.perf_counter()
    engine.run(batch)
    sync()
    out["images_per_s_batch4"] = 4 / (time.perf_counter() - t)
    out["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if fast_modes:  # bench/fast_modes.py's rows at 1024x1024: plain, cache_interval 3, 4 steps
        random_lora(engine.models.base.unet, loras)
        out["fast_modes"] = measure(engine, 1024, repeats)
        # bench/hires.py's rows: 1024 -> 1536, 20 steps; the second pass's seconds per step
        # over a plain 1536x1536 request's (goal: at most 1.02x)
        out["hires"] = measure_hires(engine, 1024, 1.5, 20, repeats)["rows"]
        # bench/controlnet.py's rows: 1024x1024, 20 steps, canny and canny + depth, ours over
        # diffusers' ControlNet pipelines (goal: at most 1.02x); resident bytes per model
        out["controlnet"] = measure_controlnet(engine, 1024, 20, repeats)
        # bench/ip_adapter.py's rows: 1024x1024, 20 steps, plus with one reference image, ours
        # over diffusers' load_ip_adapter pipeline (goal: at most 1.02x) and over plain
        out["ip_adapter"] = measure_ip_adapter(engine, weights, 1024, 20, repeats)
    engine.close()
    return out


def floor_s(weights: Path) -> float:
    """Reading every weights file onto the GPU in float16 (no cast: the files are fp16)."""
    from safetensors.torch import load_file

    # what setup loads: not the LoRAs, control models, annotators or IP-Adapters (first use)
    skipped = {"loras", "controlnet", "annotators", "ip_adapter"}
    files = [p for p in weights.rglob("*.safetensors") if not skipped & set(p.parts)]
    for path in files:  # warm the page cache
        load_file(str(path), device="cpu")
    sync()
    started = time.perf_counter()
    for path in files:
        tensors = load_file(str(path), device="cuda")
        del tensors
    sync()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", default="30,50")
    parser.add_argument("--configs", default="plain,fast,compiled")
    parser.add_argument("--out", type=Path, help="also write the record here")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--fast-modes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if args.child:
        print(json.dumps(child(args.weights, args.repeats, steps, args.fast_modes)))
        return 0
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    record: dict = {"weights": str(args.weights), "floor_s": floor_s(args.weights)}
    record["controlnets"] = ensure_controlnets(args.weights)  # before the children read them
    record["ip_adapter"] = ensure_ip_adapters(args.weights)
    cache = Path(tempfile.mkdtemp(prefix="inductor-"))
    runs = []
    for name in args.configs.split(","):
        labels = (
            ("compiled (cold cache)", "compiled (warm cache)") if name == "compiled" else (name,)
        )
        runs += [(label, CONFIGS[name]) for label in labels]
    cmd = [sys.executable, __file__, "--child", "--weights", str(args.weights)]
    cmd += ["--repeats", str(args.repeats), "--steps", args.steps]
    for label, env in runs:
        child_env = {**os.environ, "SDXL_WEIGHTS_DIR": str(args.weights), **env}
        child_env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        extra = ["--fast-modes"] if label == "fast" else []
        done = subprocess.run(cmd + extra, env=child_env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{label}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            record[label] = {"error": done.stderr[-2000:]}
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        record[label] = result
        rate, vram = result["images_per_s_batch4"], result["peak_vram_gib"]
        print(
            f"{label}: setup {result['setup_s']:.1f} s, {rate:.2f} img/s at batch 4, {vram:.1f} GiB"
        )
        for key, seconds in result["per_image_s"].items():
            print(f"    {key:34} {seconds:6.3f} s")
        for key, row in result.get("fast_modes", {}).items():
            print(f"    {key:34} {row['seconds']:6.3f} s  {row['speedup']:.2f}x plain")
        for key, row in result.get("hires", {}).items():
            print(f"    {key:34} {row['seconds_per_step']:6.3f} s/step  {row['ratio']:.3f}x plain")
        if "controlnet" in result:
            report_controlnet(result["controlnet"])
        if "ip_adapter" in result:
            report_ip_adapter(result["ip_adapter"])
    fast = record.get("fast", {})
    if "setup_s" in fast:
        record["cold_start_ratio"] = fast["setup_s"] / record["floor_s"]
    path = write("gpu", record)
    if args.out is not None:
        args.out.write_text(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
