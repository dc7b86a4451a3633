"""IP-Adapters for `weights tiny` and `weights random-full`, in h94/IP-Adapter's hub layout.

ip_adapter/models/image_encoder/: a CLIPVisionModelWithProjection (config.json and
model.safetensors, as h94 ships its ViT-H encoder); ip_adapter/sdxl_models/<file>: the SDXL
adapters of config.IP_ADAPTER_MODELS in h94's original key format, which diffusers'
`load_ip_adapter` converts on load:

- `image_proj.*`: the image projection. vit-h: `proj.weight|bias` and `norm.weight|bias`
  (diffusers' ImageProjection, 4 tokens from the encoder's image_embeds); plus and plus-face:
  the Resampler (diffusers' IPAdapterPlusImageProjection over the encoder's penultimate hidden
  states): `latents`, `proj_in.*`, `proj_out.*`, `norm_out.*` and per block N of 4
  `layers.N.0.norm1|norm2.*`, `layers.N.0.to_q|to_kv|to_out.weight`, `layers.N.1.0.*` (a
  LayerNorm), `layers.N.1.1.weight`, `layers.N.1.3.weight` (the feed-forward).
- `ip_adapter.<n>.to_k_ip.weight` and `.to_v_ip.weight`, (hidden, cross_attention_dim), with
  n = 1, 3, 5, ... over the UNet's cross-attention layers in `unet.attn_processors` order.

Every tensor is seeded random, never zero: an adapter that changes nothing would let every
test comparing an image-prompted result with diffusers' pass whatever the adapter did.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sdxl.config import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_MODELS, IP_ADAPTER_SUBFOLDER

ADAPTER_SEEDS = {"vit-h": 61, "plus": 62, "plus-face": 63}
ENCODER_SEED = 60
PLAIN_TOKENS = 4  # diffusers' converter builds ImageProjection with 4 tokens
PLUS_TOKENS = 16  # h94's SDXL plus adapters' queries (the converter reads them off `latents`)
RESAMPLER_DEPTH = 4  # the converter always builds 4 blocks
RESAMPLER_DIM_HEAD = 64  # it reads the heads as to_q's rows / 64
# The tiny encoder: 224 px as diffusers' default CLIPImageProcessor() crops, 32 px patches.
TINY_ENCODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    patch_size=32,
    image_size=224,
    projection_dim=32,
    hidden_act="gelu",
)


def encoder_folder(root: Path) -> Path:
    return Path(root) / IP_ADAPTER_DIR / IP_ADAPTER_ENCODER


def adapter_file(root: Path, name: str) -> Path:
    return Path(root) / IP_ADAPTER_DIR / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_MODELS[name]


def cross_attention_layers(unet) -> list[tuple[int, str, int]]:
    """(n of `ip_adapter.<n>`, processor name, hidden size) per cross-attention layer, numbered
    and sized as diffusers' `_convert_ip_adapter_attn_to_diffusers` reads them."""
    widths = list(unet.config.block_out_channels)
    layers, key_id = [], 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = widths[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = widths[int(name[len("down_blocks.")])]
        layers.append((key_id, name, hidden))
        key_id += 2
    return layers


def image_projection(name: str, encoder: dict, cross_attention_dim: int) -> torch.nn.Module:
    """The diffusers module diffusers' converter builds for adapter `name` over `encoder`."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    if name == "vit-h":
        return ImageProjection(
            image_embed_dim=encoder["projection_dim"],
            cross_attention_dim=cross_attention_dim,
            num_image_text_embeds=PLAIN_TOKENS,
        )
    width = encoder["hidden_size"]
    return IPAdapterPlusImageProjection(
        embed_dims=width,
        output_dims=cross_attention_dim,
        hidden_dims=width,
        depth=RESAMPLER_DEPTH,
        dim_head=RESAMPLER_DIM_HEAD,
        heads=max(1, width // RESAMPLER_DIM_HEAD),
        num_queries=PLUS_TOKENS,
    )


def seeded_state(module: torch.nn.Module, seed: int, dtype=torch.float32, meta=False) -> dict:
    """Seeded random values, none zero, for every tensor of `module` (on any device, meta
    included): LayerNorm weights about 1, everything else N(0, 1/sqrt(fan_in)) or N(0, 0.1).
    `meta`: shapes only, on the meta device (nothing drawn)."""
    g = torch.Generator().manual_seed(seed)
    norms = {
        f"{prefix}.weight".lstrip(".")
        for prefix, sub in module.named_modules()
        if isinstance(sub, torch.nn.LayerNorm)
    }
    state = {}
    for key, tensor in module.state_dict().items():
        shape = tuple(tensor.shape)
        if meta:
            state[key] = torch.empty(shape, dtype=dtype, device="meta")
            continue
        noise = torch.randn(shape, generator=g)
        if key in norms:
            noise = 1 + 0.1 * noise
        elif len(shape) >= 2:
            noise = noise / math.sqrt(math.prod(shape[1:]))
        else:
            noise = 0.1 * noise
        state[key] = noise.to(dtype)
    return state


def original_image_proj(state: dict) -> dict:
    """diffusers' image projection state under h94's original keys: the inverse of
    `_convert_ip_adapter_image_proj_to_diffusers` for ImageProjection and the Resampler."""
    out = {}
    for key, value in state.items():
        if key.startswith("image_embeds."):  # ImageProjection
            out[key.replace("image_embeds.", "proj.")] = value
            continue
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value  # latents, proj_in, proj_out, norm_out; ImageProjection's norm
            continue
        block, rest = f"layers.{parts[1]}", ".".join(parts[2:])
        if rest.startswith(("ln0.", "ln1.")):
            norm = "norm1" if rest.startswith("ln0.") else "norm2"
            out[f"{block}.0.{norm}.{parts[-1]}"] = value
        elif rest in ("attn.to_q.weight", "attn.to_out.0.weight"):
            out[f"{block}.0.{parts[3]}.weight"] = value
        elif rest == "attn.to_k.weight":
            out[f"{block}.0.to_kv.weight"] = torch.cat([value, state[f"{block}.attn.to_v.weight"]])
        elif rest.startswith("ff."):
            ff = {"ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
            module, leaf = rest.rsplit(".", 1)
            out[f"{block}.{ff[module]}.{leaf}"] = value
        elif rest != "attn.to_v.weight":  # to_v went into to_kv
            raise KeyError(f"no original key for the Resampler's {key}")
    return out


def ip_adapter_state(
    name: str, unet, encoder: dict, seed: int, dtype=torch.float32, meta=False
) -> dict:
    """Adapter `name` for `unet` (meta device fine) over an encoder of config `encoder`, under
    h94's original flat keys, seeded (`meta`: shapes only)."""
    cross = unet.config.cross_attention_dim
    with torch.device("meta"):
        projection = image_projection(name, encoder, cross)
    projection_state = seeded_state(projection, seed, dtype, meta)
    state = {f"image_proj.{k}": v for k, v in original_image_proj(projection_state).items()}
    g = torch.Generator().manual_seed(seed + 1000)
    for key_id, _, hidden in cross_attention_layers(unet):
        for which in ("to_k_ip", "to_v_ip"):
            if meta:
                weight = torch.empty((hidden, cross), device="meta")
            else:
                weight = torch.randn((hidden, cross), generator=g) / math.sqrt(cross)
            state[f"ip_adapter.{key_id}.{which}.weight"] = weight.to(dtype)
    return state


def write_ip_adapters(root: Path, unet, encoder: dict, dtype=torch.float32, log=None) -> None:
    """Write the three adapters of config.IP_ADAPTER_MODELS under `root`/ip_adapter/."""
    from safetensors.torch import save_file

    for name, seed in ADAPTER_SEEDS.items():
        path = adapter_file(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = ip_adapter_state(name, unet, encoder, seed, dtype)
        save_file(state, str(path), metadata={"format": "pt"})
        if log is not None:
            count = sum(t.numel() for t in state.values())
            log(f"{path.relative_to(root)}: {count / 1e9:.3f} B parameters")


def build_tiny_ip_adapter(root: Path, unet) -> Path:
    """Write `root`/ip_adapter/: the tiny image encoder and the three adapters for `unet`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(ENCODER_SEED)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ENCODER)).eval()
    encoder.save_pretrained(encoder_folder(root), safe_serialization=True)
    write_ip_adapters(root, unet, TINY_ENCODER)
    return Path(root) / IP_ADAPTER_DIR
