"""Tiny random-weight RRDBNets (ESRGAN-family upscalers) for `weights tiny`, one per name in
`sdxl.config.MODEL_UPSCALERS`: 4x, 8 features, 1 RRDB block, growth 4 (a few thousand
parameters). The first is saved with the original ESRGAN's "old arch" keys, as 4x-UltraSharp
ships, so the loader's conversion runs end to end; the others with Real-ESRGAN's keys.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdxl.config import MODEL_UPSCALERS, UPSCALERS_DIR
from sdxl.upscale.rrdbnet import RRDBNet

TINY_RRDBNET = dict(num_feat=8, num_block=1, num_grow_ch=4, num_up=2)  # x4


def tiny_rrdbnet(seed: int, arch: dict | None = None) -> RRDBNet:
    """A 4x RRDBNet (tiny unless `arch` says) with seeded random weights, scaled so its output
    is not flat."""
    torch.manual_seed(seed)
    model = RRDBNet(**(arch or TINY_RRDBNET))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2 if param.dim() > 1 else 0.05)
    return model.eval()


def to_old_arch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's keys as the original ESRGAN's sequential model names them."""
    ups = sorted(k.split(".")[0] for k in state if k.startswith("conv_up") and k.endswith("weight"))
    top = {"conv_first": 0, **{name: 3 * (i + 1) for i, name in enumerate(ups)}}
    top |= {"conv_hr": 3 * len(ups) + 2, "conv_last": 3 * len(ups) + 4}
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    old = {}
    for key, value in state.items():
        layer, rest = key.split(".", 1)
        if layer == "body":  # body.i.rdbR.convC.weight -> model.1.sub.i.RDBR.convC.0.weight
            i, rdb, conv, kind = rest.split(".")
            old[f"model.1.sub.{i}.RDB{rdb[3:]}.{conv}.0.{kind}"] = value
        elif layer == "conv_body":
            old[f"model.1.sub.{blocks}.{rest}"] = value
        else:
            old[f"model.{top[layer]}.{rest}"] = value
    return old


def build_tiny_upscalers(root: Path, arch: dict | None = None) -> Path:
    """Write `root`/upscalers/<name>.safetensors for each of MODEL_UPSCALERS (RRDBNets of `arch`,
    tiny by default); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(root) / UPSCALERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(MODEL_UPSCALERS):
        state = {k: v.contiguous() for k, v in tiny_rrdbnet(40 + index, arch).state_dict().items()}
        save_file(to_old_arch(state) if index == 0 else state, str(folder / f"{name}.safetensors"))
    return folder
