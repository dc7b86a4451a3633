"""RRDBNet, the ESRGAN-family network (ESRGAN, Real-ESRGAN, 4x-UltraSharp), from a state dict.

Ours because `spandrel` needs torchvision, which can't be installed beside the CPU torch wheel here.

The layout is Real-ESRGAN's ("new arch", basicsr's `rrdbnet_arch`): `conv_first`; `body`, a
chain of RRDB blocks of three residual dense blocks of five 3x3 convs each (growth channels,
LeakyReLU 0.2, residuals scaled by 0.2); `conv_body` with a skip around the body; per 2x, a
nearest upsampling then `conv_upN` + LeakyReLU; `conv_hr` + LeakyReLU; `conv_last`. Real-ESRGAN's
x2 and x1 models pixel-unshuffle the image first (`conv_first` reads 12 or 48 channels).

Files in the original ESRGAN layout ("old arch", e.g. 4x-UltraSharp: `model.0`,
`model.1.sub.N.RDB1.conv1.0`, ...) and BSRGAN's (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`)
are renamed to it. Hyperparameters come from the keys and shapes; loading is strict.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

RESIDUAL_SCALE = 0.2
NEGATIVE_SLOPE = 0.2


class UpscalerFileError(ValueError):
    """A weights file that is not an RRDBNet we can load; the message names the file and key."""


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each reading the block's input and every earlier conv's output."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for i in range(5):
            out = num_feat if i == 4 else num_grow_ch
            setattr(self, f"conv{i + 1}", nn.Conv2d(num_feat + i * num_grow_ch, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            conv = getattr(self, f"conv{i}")
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), NEGATIVE_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, with a scaled skip around them."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """Upscales (N, C, H, W) images in 0..1 by `scale` = 2**num_up / unshuffle."""

    def __init__(
        self,
        num_feat: int,
        num_block: int,
        num_grow_ch: int,
        num_up: int = 2,
        unshuffle: int = 1,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ):
        super().__init__()
        self.unshuffle = unshuffle
        self.scale = 2**num_up // unshuffle
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.up_names = [f"conv_up{i + 1}" for i in range(num_up)]
        for name in self.up_names:
            setattr(self, name, nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:  # sides must be multiples of `unshuffle`
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.up_names:
            feat = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, name)(feat), NEGATIVE_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), NEGATIVE_SLOPE))


_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_OLD_SUB = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")
_BSRGAN = [
    (re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\."), r"body.\1.rdb\2."),
    (re.compile(r"trunk_conv\."), "conv_body."),
    (re.compile(r"upconv(\d)\."), r"conv_up\1."),
    (re.compile(r"HRconv\."), "conv_hr."),
]


def _from_old_arch(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Original ESRGAN's sequential keys -> ours: model.0 conv_first; model.1.sub.i the RRDBs and
    model.1.sub.<last> conv_body; model.3, .6, ... conv_up1, 2, ...; then conv_hr, conv_last."""
    out: dict[str, torch.Tensor] = {}
    tops: dict[int, list[str]] = {}
    subs = [int(m[1]) for k in state if (m := _OLD_SUB.fullmatch(k))]
    for key, value in state.items():
        if m := _OLD_RDB.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif (m := _OLD_SUB.fullmatch(key)) and int(m[1]) == max(subs):
            out[f"conv_body.{m[2]}"] = value
        elif (m := _OLD_TOP.fullmatch(key)) and m[1] != "1":
            tops.setdefault(int(m[1]), []).append(key)
        else:
            out[key] = value  # left as it is: the strict check names it
    indices = sorted(tops)
    num_up = (len(indices) - 3) if len(indices) >= 3 else 0
    expected = [0, *(3 * (i + 1) for i in range(num_up)), 3 * num_up + 2, 3 * num_up + 4]
    if indices != expected:
        raise UpscalerFileError(
            f"{where}: the old-arch (ESRGAN) layers are model.{indices}; an RRDBNet with "
            f"{num_up} upsampling conv(s) has model.{expected} (is it another architecture?)"
        )
    names = ["conv_first", *(f"conv_up{i + 1}" for i in range(num_up)), "conv_hr", "conv_last"]
    for index, name in zip(indices, names, strict=True):
        for key in tops[index]:
            out[f"{name}.{key.rsplit('.', 1)[1]}"] = state[key]
    return out


def to_new_arch(state: dict[str, torch.Tensor], where: str = "state dict") -> dict:
    """The state dict in Real-ESRGAN's key names, whichever of the three layouts it is in."""
    if "model.0.weight" in state:
        return _from_old_arch(state, where)
    if any(key.startswith("RRDB_trunk.") for key in state):
        renamed = {}
        for key, value in state.items():
            for pattern, repl in _BSRGAN:
                key = pattern.sub(repl, key)
            renamed[key] = value
        return renamed
    return dict(state)


def _hyperparameters(state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    for key in ("conv_first.weight", "conv_last.weight", "body.0.rdb1.conv1.weight"):
        if key not in state:
            raise UpscalerFileError(
                f"{where}: no {key}; this is not an ESRGAN-family RRDBNet "
                "(keys like conv_first.weight, body.0.rdb1.conv1.weight or model.0.weight)"
            )
    first, last = state["conv_first.weight"], state["conv_last.weight"]
    in_ch, out_ch = first.shape[1], last.shape[0]
    unshuffle = {out_ch: 1, out_ch * 4: 2, out_ch * 16: 4}.get(in_ch)
    if unshuffle is None:
        raise UpscalerFileError(
            f"{where}: conv_first.weight reads {in_ch} channels and conv_last.weight writes "
            f"{out_ch}; an RRDBNet reads {out_ch}, {out_ch * 4} or {out_ch * 16}"
        )
    num_up = sum(1 for key in state if re.fullmatch(r"conv_up\d+\.weight", key))
    if 2**num_up < unshuffle:
        raise UpscalerFileError(
            f"{where}: {num_up} upsampling conv(s) undo no {unshuffle}x pixel unshuffle"
        )
    return dict(
        num_feat=first.shape[0],
        num_block=len({key.split(".")[1] for key in state if key.startswith("body.")}),
        num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0],
        num_up=num_up,
        unshuffle=unshuffle,
        num_in_ch=in_ch // unshuffle**2,
        num_out_ch=out_ch,
    )


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"missing key {missing[0]}" if missing else ""]
        parts.append(f"unexpected key {unexpected[0]}" if unexpected else "")
        counts = f"({len(missing)} missing, {len(unexpected)} unexpected)"
        raise UpscalerFileError(
            f"{where}: not an RRDBNet we can load: {', '.join(p for p in parts if p)} {counts}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            got, want = tuple(state[key].shape), tuple(tensor.shape)
            raise UpscalerFileError(f"{where}: {key} has shape {got}, an RRDBNet's is {want}")


def rrdbnet_from_state_dict(state: dict[str, torch.Tensor], where: str = "state dict") -> RRDBNet:
    """An RRDBNet holding `state` (any of the three layouts), strictly: every key, every shape."""
    state = to_new_arch(state, where)
    model = RRDBNet(**_hyperparameters(state, where))
    _check_keys(model, state, where)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_rrdbnet(path: Path) -> RRDBNet:
    """An RRDBNet from a .safetensors file; pickles (.pth, .pt, .ckpt) are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UpscalerFileError(
            f"{path}: upscalers load from .safetensors only (pickles can run code); "
            "convert it, e.g. safetensors.torch.save_file(torch.load(f, weights_only=True), ...)"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UpscalerFileError(f"{path}: cannot read it as safetensors ({err})") from err
    return rrdbnet_from_state_dict(state, str(path))
