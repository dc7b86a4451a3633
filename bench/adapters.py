"""What resident trained weights save on the second call of the same `replicate_weights`.

Runs a Replicate trainer tar (a LoRA one, then a full fine-tune) several times through an
engine that keeps it resident and through one that loads and unloads it every call, and prints
the median seconds of the repeated calls and their ratio. Also prints, for SDXL's real base
UNet, the bytes a fine-tune call no longer copies into the shared UNet and back.

    python bench/bench_adapters.py                     # tiny model, built in a temp folder
    python bench/bench_adapters.py --weights weights   # any weights folder (random-full, real)

Writes bench/results/adapters.json. Ratios compare across machines; seconds only on one.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import weights_or_tiny, write
from safetensors.torch import save

from sdxl.core.request import Request
from sdxl.engine import Engine, EngineSettings
from sdxl.settings import FetchSettings, Runtime
from sdxl.trained.fetch import DownloadCache

SDXL_BASE_UNET_PARAMETERS = 2_567_463_684  # SDXL 1.0 base UNet (diffusers' config)


def trainer_tar(models, kind: str) -> bytes:
    """A trainer tar for these models: a rank-32 LoRA on every attention projection, or a
    full fine-tune (every UNet weight but the norms, perturbed)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    unet = models.base.unet
    if kind == "lora":
        for name, module in unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                for proj, attr in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v")):
                    layer = getattr(module, attr)
                    key = f"{name}.processor.{proj}_lora"
                    state[f"{key}.down.weight"] = torch.randn(32, layer.in_features, generator=g)
                    state[f"{key}.up.weight"] = torch.randn(layer.out_features, 32, generator=g)
        member = "lora.safetensors"
    else:
        state = {k: v.float() + 0.01 for k, v in unet.state_dict().items() if "norm" not in k}
        member = "unet.safetensors"
    data = save({k: v.to(torch.float16).contiguous() for k, v in state.items()})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def repeated_call_seconds(engine: Engine, request: Request, calls: int) -> float:
    engine.run(request)  # the first call downloads and loads
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        engine.run(request)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: tiny, built now)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    weights = weights_or_tiny(args.weights, work)
    runtime = Runtime(weights_dir=weights, dtype="auto")
    cache = DownloadCache(FetchSettings(cache_dir=work / "cache", local_dirs=(work,)))
    record: dict = {"weights": "tiny" if args.weights is None else str(args.weights)}
    record["calls"] = args.calls
    print(f"{'trained weights':16} {'resident s':>11} {'reloaded s':>11} {'ratio':>6}")
    for kind, resident, reloaded in (
        ("lora", {"max_resident_loras": 4}, {"max_resident_loras": 0}),
        ("fine-tune", {"max_resident_unets": 1}, {"max_resident_unets": 0}),
    ):
        seconds = {}
        for label, settings in (("resident", resident), ("reloaded", reloaded)):
            engine = Engine(runtime, EngineSettings(**settings), cache=cache)
            engine.load()
            tar = work / f"{kind}.tar"
            if not tar.exists():
                tar.write_bytes(trainer_tar(engine.models, kind))
            request = Request(
                prompt="a photo of TOK",
                width=args.size,
                height=args.size,
                num_inference_steps=args.steps,
                seed=1,
                replicate_weights=str(tar),
            )
            seconds[label] = repeated_call_seconds(engine, request, args.calls)
            engine.close()
            del engine
        ratio = seconds["reloaded"] / seconds["resident"]
        record[kind] = {**seconds, "reloaded_over_resident": ratio}
        print(f"{kind:16} {seconds['resident']:11.3f} {seconds['reloaded']:11.3f} {ratio:6.2f}")
    fp16_unet = SDXL_BASE_UNET_PARAMETERS * 2
    record["full_size_finetune_bytes_not_copied_per_call"] = 2 * fp16_unet
    print(
        f"full size: a resident fine-tune saves copying {fp16_unet / 1e9:.2f} GB into the "
        f"shared UNet and {fp16_unet / 1e9:.2f} GB back on every call"
    )
    write("adapters", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
