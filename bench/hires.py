"""The hires fix's second pass, measured: its seconds per step against a plain request at the
larger size. Request A is txt2img at --size with hires_scale --scale (K_EULER, --steps steps,
hires_steps the same, hires_strength 0.5), once with the "Latent" upscaler and once with
"Lanczos"; request B is plain txt2img at size x scale with the same steps. Each UNet forward
call is timed (a pre-hook on the base UNet, CUDA synchronized): A's calls after the first
pass's count (counted on a plain request at --size) are the second pass, and a pass's seconds
per step is the median interval between consecutive call starts within it (the second pass's
first interval, which holds the upscale, left out). B likewise over all its calls. The median
time inside one UNet call is recorded beside it ("in UNet"), to tell the UNet from the rest.

All three in one engine, their requests interleaved round by round (medians over rounds), so
that a change in the machine's speed hits them alike.

    python bench/hires.py --weights DIR [--size 512] [--scale 2] [--steps 20] [--rounds 2]

Writes bench/results/hires.json (hires-tiny.json without --weights, at 256). Target: the
second pass's seconds per step at most 1.02x the plain request's.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from common import loaded_engine, median, sync, weights_or_tiny, write

TARGET = 1.02
UPSCALERS = ("Latent", "Lanczos")


class CallTimes:
    """When each base UNet forward call starts and ends (perf_counter, after a CUDA sync)."""

    def __init__(self, unet):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self._hooks = [
            unet.register_forward_pre_hook(lambda *a: self._add(self.starts)),
            unet.register_forward_hook(lambda *a: self._add(self.ends)),
        ]

    @staticmethod
    def _add(into: list[float]) -> None:
        sync()
        into.append(time.perf_counter())

    def take(self) -> tuple[list[float], list[float]]:
        found = (self.starts, self.ends)
        self.starts, self.ends = [], []
        return found

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def per_step(starts: list[float]) -> float:
    """The median interval between consecutive call starts."""
    return median([b - a for a, b in itertools.pairwise(starts)])


def forward(starts: list[float], ends: list[float]) -> float:
    """The median time inside one UNet forward call."""
    return median([end - start for start, end in zip(starts, ends, strict=True)])


def timed_rounds(calls: dict, unet, rounds: int) -> dict[str, dict]:
    """Each call run once a round, in order, for `rounds` rounds: per row its seconds per step
    each round (the first interval, the warm-up, left out), its median UNet forward time and its
    UNet calls (bench/controlnet.py, bench/ip_adapter.py)."""
    rows = {name: {"each_round": [], "inside": [], "unet_calls": 0} for name in calls}
    times = CallTimes(unet)
    try:
        for _ in range(rounds):
            for name, call in calls.items():
                call()
                starts, ends = times.take()
                rows[name]["unet_calls"] = len(starts)
                rows[name]["inside"].append(forward(starts[1:], ends[1:]))
                rows[name]["each_round"].append(per_step(starts[1:]))
    finally:
        times.close()
    return rows


def measure(engine, size: int, scale: float, steps: int, rounds: int) -> dict:
    """Each row's median seconds per step over rounds, its UNet calls, and its ratio to plain."""
    from sdxl.inputs.request import Request

    large = round(size * scale)
    plain_name = f"plain at {large}x{large}"

    def request(width: int, **extra) -> Request:
        return Request(
            prompt="A studio portrait photo of a cat",
            width=width,
            height=width,
            scheduler="K_EULER",
            num_inference_steps=steps,
            seed=1,
            apply_watermark=False,
            disable_safety_checker=True,
            **extra,
        )

    def hires(upscaler: str) -> Request:
        return request(
            size,
            hires_scale=scale,
            hires_upscaler=upscaler,
            hires_steps=steps,
            hires_strength=0.5,
        )

    requests = {f"second pass ({name})": hires(name) for name in UPSCALERS}
    requests[plain_name] = request(large)

    times = CallTimes(engine.models.base.unet)
    try:
        engine.run(request(size))  # warm-up, and the first pass's count of UNet calls
        first = len(times.take()[0])
        calls = {}
        for name, req in requests.items():  # warm-up at each size and upscaler
            engine.run(req)
            calls[name] = len(times.take()[0])
        seconds: dict[str, list[float]] = {name: [] for name in requests}
        inside: dict[str, list[float]] = {name: [] for name in requests}
        for _ in range(rounds):
            for name, req in requests.items():
                engine.run(req)
                starts, ends = times.take()
                if name != plain_name:  # the second pass's calls
                    starts, ends = starts[first:], ends[first:]
                inside[name].append(forward(starts, ends))
                if name != plain_name:  # less its first interval (the upscale is in it)
                    starts = starts[1:]
                seconds[name].append(per_step(starts))
    finally:
        times.close()
    plain = median(seconds[plain_name])
    rows = {}
    for name in requests:
        took = median(seconds[name])
        second = name != plain_name
        rows[name] = {
            "seconds_per_step": took,
            "each_round": seconds[name],
            "unet_forward_seconds": median(inside[name]),
            "unet_calls": calls[name] - (first if second else 0),
            "ratio": took / plain,
            "target": TARGET if second else None,
        }
    return {"first_pass_unet_calls": first, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    weights = weights_or_tiny(args.weights, Path(tempfile.mkdtemp()))
    size = args.size if args.weights else 256
    engine = loaded_engine(weights)
    found = measure(engine, size, args.scale, args.steps, args.rounds)
    dtype = str(engine.models.base.unet.dtype)
    engine.close()
    print(f"first pass: {found['first_pass_unet_calls']} UNet calls at {size}x{size}")
    print(f"{'row':24} {'s/step':>8} {'in UNet':>8} {'UNet calls':>11} {'ratio':>7}")
    for name, row in found["rows"].items():
        target = f"  (target <= {row['target']})" if row["target"] else ""
        print(
            f"{name:24} {row['seconds_per_step']:8.3f} {row['unet_forward_seconds']:8.3f} "
            f"{row['unet_calls']:11d} {row['ratio']:6.3f}x{target}"
        )
    record = {
        "weights": str(args.weights or "tiny"),
        "size": size,
        "scale": args.scale,
        "steps": args.steps,
        "hires_strength": 0.5,
        "scheduler": "K_EULER",
        "rounds": args.rounds,
        "dtype": dtype,
        **found,
    }
    write("hires" if args.weights else "hires-tiny", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
