"""A small random kohya-format LoRA, for the tiny test model's `loras/offset.safetensors`."""

from __future__ import annotations

import torch


def random_kohya_lora(unet, rank: int = 4, seed: int = 0, std: float = 0.05) -> dict:
    """Random low-rank updates for `unet`'s attention projections, in kohya's key format."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in unet.named_modules():
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=g) * std
            out[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=g) * std
            out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out
