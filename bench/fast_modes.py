"""The fast modes, measured: seconds per image for 30 steps plain (K_EULER, guidance 7.5), the
same 30 steps with cache_interval 3 (DeepCache), and 4 steps of the SDXL-Lightning recipe
(K_EULER with trailing spacing, guidance 0, a distilled LoRA already resident; random weights
here, which time exactly like the real file). UNet forward calls and full-branch calls (the
deep blocks DeepCache skips) are counted per image.

All three in one engine, their calls interleaved round by round (medians), so that a change in
the machine's speed hits them alike.

    python bench/fast_modes.py --weights DIR [--size 512] [--rounds 2]

On the CPU the product's default dtype (bfloat16 where native). Writes
bench/results/fast-modes.json (fast-modes-tiny.json without --weights). Targets:
cache_interval 3 at least 2.0x faster than plain, the 4-step recipe at least 6x.
bench/gpu.py runs the same rows at 1024x1024 on CUDA (`measure`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import median, timed, weights_or_tiny, write

TARGETS = {"cache_interval 3": 2.0, "lightning 4 steps": 6.0}
RECIPES = {
    "plain": {"scheduler": "K_EULER", "num_inference_steps": 30, "guidance_scale": 7.5},
    "cache_interval 3": {
        "scheduler": "K_EULER",
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "cache_interval": 3,
    },
    "lightning 4 steps": {
        "scheduler": "K_EULER",
        "timestep_spacing": "trailing",
        "num_inference_steps": 4,
        "guidance_scale": 0.0,
        "lora_id": "lightning",
        "lora_scale": 1.0,
    },
}


def random_lora(unet, folder: Path, rank: int = 64) -> None:
    """A kohya-format LoRA on every attention projection (SDXL-Lightning's format and rank)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = {}
    for name, layer in unet.named_modules():
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            key = "lora_unet_" + name.replace(".", "_")
            down = torch.randn(rank, layer.in_features, generator=g) * 0.01
            state[f"{key}.lora_down.weight"] = down.to(torch.float16)
            up = torch.randn(layer.out_features, rank, generator=g) * 0.01
            state[f"{key}.lora_up.weight"] = up.to(torch.float16)
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "lightning.safetensors"))


class Counts:
    """UNet forward calls, and calls of its deep branch (the mid block's first resnet, which a
    cached step does not run)."""

    def __init__(self, unet):
        self.calls = self.full = 0
        self._hooks = [
            unet.register_forward_hook(lambda *a: self._add("calls")),
            unet.mid_block.resnets[0].register_forward_hook(lambda *a: self._add("full")),
        ]

    def _add(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def take(self) -> tuple[int, int]:
        found = (self.calls, self.full)
        self.calls = self.full = 0
        return found

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def measure(engine, size: int, rounds: int) -> dict:
    """Each recipe's median seconds per image, its calls, and its speed-up over plain."""
    from sdxl.inputs.request import Request

    def request(recipe: dict) -> Request:
        base = {"prompt": "A studio portrait photo of a cat", "width": size, "height": size}
        return Request(**base, seed=1, apply_watermark=False, **recipe)

    counts = Counts(engine.models.base.unet)
    try:
        calls = {}
        for name, recipe in RECIPES.items():  # warm-up: the LoRA becomes resident here
            counts.take()
            engine.run(request(recipe))
            calls[name] = counts.take()
        seconds: dict[str, list[float]] = {name: [] for name in RECIPES}
        for _ in range(rounds):
            for name, recipe in RECIPES.items():
                seconds[name].append(timed(lambda recipe=recipe: engine.run(request(recipe))))
    finally:
        counts.close()
    plain = median(seconds["plain"])
    rows = {}
    for name in RECIPES:
        took = median(seconds[name])
        rows[name] = {
            "seconds": took,
            "each_round": seconds[name],
            "unet_calls": calls[name][0],
            "full_branch_calls": calls[name][1],
            "speedup": plain / took,
            "target": TARGETS.get(name),
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from sdxl.engine import Engine, EngineSettings
    from sdxl.settings.tree import RuntimeGroup

    folder = Path(tempfile.mkdtemp())
    weights = weights_or_tiny(args.weights, folder)
    size = args.size if args.weights else 256
    runtime = RuntimeGroup.read({"SDXL_WEIGHTS_DIR": str(weights)}).build()
    engine = Engine(runtime, EngineSettings(lora_dir=folder / "loras"))
    engine.load()
    random_lora(engine.models.base.unet, folder / "loras")
    rows = measure(engine, size, args.rounds)
    engine.close()
    print(f"{'recipe':20} {'s/image':>9} {'UNet calls':>11} {'full':>5} {'speed-up':>9}")
    for name, row in rows.items():
        target = f"  (target >= {row['target']})" if row["target"] else ""
        print(
            f"{name:20} {row['seconds']:9.2f} {row['unet_calls']:11d} "
            f"{row['full_branch_calls']:5d} {row['speedup']:8.2f}x{target}"
        )
    dtype = str(engine.models.base.unet.dtype)
    record = {"weights": str(args.weights or "tiny"), "size": size, "dtype": dtype, "rows": rows}
    write("fast-modes" if args.weights else "fast-modes-tiny", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
