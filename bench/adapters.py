"""What resident trained weights save on the second call of the same `replicate_weights`.

1. A Replicate trainer tar (a LoRA one, then a full fine-tune) run several times through an
   engine that keeps it resident and through one that loads and unloads it every call, the
   two engines' calls interleaved; the median seconds of the repeated calls and their ratio.
2. With --full DIR (python -m sdxl weights random-full DIR): what a fine-tune call without a
   resident UNet does to SDXL's real base UNet, measured: the bytes it copies into the shared
   UNet and back, and the seconds that takes on this machine (the resident path hands over
   its own module instead and copies nothing).

    python bench/adapters.py [--full DIR]          # tiny model for 1, built in a temp folder

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

from sdxl.adapters.fetch import DownloadCache
from sdxl.engine import Engine, EngineSettings
from sdxl.inputs.request import Request
from sdxl.settings import FetchSettings, Runtime


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


def interleaved_calls(engines: dict[str, Engine], request: Request, calls: int) -> dict:
    """Median seconds of each engine's repeated calls of `request`, the engines in turn."""
    for engine in engines.values():
        engine.run(request)  # the first call downloads and loads
    times: dict[str, list[float]] = {label: [] for label in engines}
    for _ in range(calls):
        for label, engine in engines.items():
            started = time.perf_counter()
            engine.run(request)
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(found) for label, found in times.items()}


def full_size_copy(weights: Path, calls: int) -> dict:
    """A fine-tune copied into SDXL's base UNet and put back, as a call without a resident UNet
    does it (sdxl.adapters.session), at full size: bytes each way and seconds."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from sdxl.adapters.session import Session

    unet = UNet2DConditionModel.from_pretrained(
        weights / "base" / "unet", torch_dtype=torch.bfloat16
    ).requires_grad_(False)
    tuned = {k: (v.float() + 0.01).to(torch.float16) for k, v in unet.state_dict().items()}
    models = SimpleNamespace(base=SimpleNamespace(unet=unet))
    into = sum(v.numel() * unet.dtype.itemsize for v in tuned.values())
    seconds = []
    for _ in range(calls + 1):  # the first call opens and checks the UNet's own file
        session = Session(models)
        started = time.perf_counter()
        session.finetune(tuned)
        session.restore()
        seconds.append(time.perf_counter() - started)
    return {
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "bytes_copied_in": into,
        "bytes_copied_back": into,
        "copy_and_restore_s": statistics.median(seconds[1:]),
        "first_call_s": seconds[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=Path, help="random-full weights: measure the copy too")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    weights = weights_or_tiny(None, work)
    runtime = Runtime(weights_dir=weights, dtype="auto")
    cache = DownloadCache(FetchSettings(cache_dir=work / "cache", local_dirs=(work,)))
    record: dict = {"weights": "tiny", "calls": args.calls, "interleaved": True}
    print(f"{'trained weights':16} {'resident s':>11} {'reloaded s':>11} {'ratio':>6}")
    for kind, resident, reloaded in (
        ("lora", {"max_resident_loras": 4}, {"max_resident_loras": 0}),
        ("fine-tune", {"max_resident_unets": 1}, {"max_resident_unets": 0}),
    ):
        engines = {}
        for label, settings in (("resident", resident), ("reloaded", reloaded)):
            engines[label] = Engine(runtime, EngineSettings(**settings), cache=cache)
            engines[label].load()
        tar = work / f"{kind}.tar"
        tar.write_bytes(trainer_tar(engines["resident"].models, kind))
        request = Request(
            prompt="a photo of TOK",
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            seed=1,
            replicate_weights=str(tar),
        )
        seconds = interleaved_calls(engines, request, args.calls)
        for engine in engines.values():
            engine.close()
        ratio = seconds["reloaded"] / seconds["resident"]
        record[kind] = {**seconds, "reloaded_over_resident": ratio}
        print(f"{kind:16} {seconds['resident']:11.3f} {seconds['reloaded']:11.3f} {ratio:6.2f}")
    if args.full is not None:
        copy = full_size_copy(args.full, args.calls)
        record["full_size_finetune_without_resident_unet"] = copy
        gigabytes = copy["bytes_copied_in"] / 1e9
        print(
            f"full size, a fine-tune without a resident UNet: {gigabytes:.2f} GB copied into "
            f"the shared UNet and {gigabytes:.2f} GB back, {copy['copy_and_restore_s']:.1f} s "
            "a call on this machine; a resident fine-tune copies none of it"
        )
    write("adapters", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
