"""Cold start: setup time against the floor of reading the same safetensors bytes.

Both on a warm page cache (every file is read once first), in the dtype the product uses:
the floor reads each weights file into memory and casts it to that dtype (the files are fp16;
float16 needs no cast, bfloat16 and float32 do: both are timed and printed). Setup is
`load_models` (base, refiner, safety checker) without the warm-up generation.

    python bench/cold_start.py --weights DIR    # DIR: python -m sdxl weights random-full DIR

Target: setup / floor <= 1.3. Writes bench/results/cold-start.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from common import median, sync, write
from safetensors.torch import load_file

from sdxl.model.loading import load_models
from sdxl.model.pipelines import pick_device, pick_dtype
from sdxl.settings.tree import RuntimeGroup


def weight_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.safetensors")) if "loras" not in p.parts]


def read_floor(files: list[Path], dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(seconds to read every file into memory, seconds to read and cast to `dtype`)."""
    read = cast = 0.0
    for path in files:
        started = time.perf_counter()
        tensors = load_file(str(path), device=str(device))
        sync()
        read += time.perf_counter() - started
        started = time.perf_counter()
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        sync()
        cast += time.perf_counter() - started
        del tensors
    return read, read + cast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runtime = dataclasses.replace(
        RuntimeGroup.read({"SDXL_WEIGHTS_DIR": str(args.weights)}).build(),
        warmup="0",
        compile=False,
    )
    device = pick_device(runtime.device)
    dtype = pick_dtype(runtime.dtype, device)
    files = weight_files(args.weights)
    size = sum(p.stat().st_size for p in files)
    read_floor(files, dtype, device)  # warm the page cache
    floors, setups = [], []
    for _ in range(args.repeats):
        floors.append(read_floor(files, dtype, device))
        started = time.perf_counter()
        models = load_models(runtime)
        sync()
        setups.append(time.perf_counter() - started)
        del models
    read_s = median([f[0] for f in floors])
    floor_s = median([f[1] for f in floors])
    setup_s = median(setups)
    cast = "no cast" if dtype == torch.float16 else f"cast fp16 -> {str(dtype)[6:]}"
    print(f"{size / 1e9:.2f} GB of safetensors on {device}, product dtype {str(dtype)[6:]}")
    print(f"read {read_s:.2f} s, read + {cast} {floor_s:.2f} s (the floor)")
    print(f"setup {setup_s:.2f} s = {setup_s / floor_s:.2f} x the floor (target <= 1.3)")
    write(
        "cold-start",
        {
            "weights_bytes": size,
            "dtype": str(dtype),
            "read_s": read_s,
            "floor_s": floor_s,
            "setup_s": setup_s,
            "ratio": setup_s / floor_s,
            "cast": cast,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
