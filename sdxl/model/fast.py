"""The fast path, applied once at load: what each switch does and where it is on by default.

On CUDA (`auto`): float16 with the fp16-safe VAE (never upcast), SDPA attention (diffusers'
default processor), channels-last UNets and VAE, fused QKV projections, TF32 for what still
runs in float32, and a warm-up generation in setup. On the CPU (`auto`): bfloat16 where the
CPU has it natively, nothing else (channels-last and fusion gain little there; measured in
bench/cpu_dtype.py). `SDXL_COMPILE=1` adds torch.compile for the shapes named in
SDXL_COMPILE_SHAPES (see `sdxl.model.compiled`). Every switch can be forced on or off, and the
CPU tests force each one to check it against the plain modules.

Fused QKV keeps one copy of each weight: the separate to_q/to_k/to_v weights become views of
the fused one, so memory stays at the safetensors' bytes and a LoRA can still wrap to_q/to_k/
to_v, which the unfused processors use while it is active (`use_fused`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls in hardware. Elsewhere they are emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def check_vae(vae, dtype: torch.dtype) -> None:
    """A VAE that asks to be upcast (`force_upcast`) would make every float16 pipeline call
    cast the SHARED VAE to float32 and back: refuse it, naming the fp16-safe one."""
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        raise ValueError(
            "the VAE in base/vae asks to run in float32 (force_upcast), which would change "
            "the shared VAE on every call; use the fp16-safe SDXL VAE "
            "(madebyollin/sdxl-vae-fp16-fix, what `python -m sdxl weights download` fetches)"
        )


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def to_channels_last(*modules) -> None:
    for module in modules:
        module.to(memory_format=torch.channels_last)


def fuse_qkv(unet) -> dict:
    """Fuse every attention's projections (one matmul), keeping one copy of each weight, in a
    UNet or a ControlNet.
    Returns the fused processors (`use_fused` switches between them and the plain ones)."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    unet.fuse_qkv_projections()
    for module in unet.modules():
        if isinstance(module, Attention):
            if not module.fused_projections:  # a ControlNet's own method skips these (0.42)
                module.fuse_projections()
            _share(module)
    unet.set_attn_processor(FusedAttnProcessor2_0())
    return dict(unet.attn_processors)


def _share(attn) -> None:
    """to_q/to_k/to_v's weights (and biases) as views of the fused projection's."""
    fused = getattr(attn, "to_qkv", None)
    parts = ("to_q", "to_k", "to_v")
    if fused is None:
        fused, parts = attn.to_kv, ("to_k", "to_v")
    for tensor_name in ("weight", "bias"):
        whole = getattr(fused, tensor_name)
        if whole is None:
            continue
        start = 0
        for part in parts:
            layer = getattr(attn, part)
            size = getattr(layer, tensor_name).shape[0]
            view = torch.nn.Parameter(whole.data[start : start + size], requires_grad=False)
            setattr(layer, tensor_name, view)
            start += size


def use_fused(unet, fused: dict | None, on: bool) -> None:
    """The fused processors (on) or the plain ones (a LoRA wraps to_q/to_k/to_v)."""
    if fused is None:
        return
    chosen = fused if on else unet.original_attn_processors
    unet.set_attn_processor(dict(chosen))  # a copy: diffusers pops from the dict it is given


def parameter_bytes(*modules) -> int:
    """Bytes of the distinct tensors behind `modules`' parameters (views counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in module.parameters():
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
