"""Helpers for the LoRA / trained-weights tests: artifacts made here, state snapshots, runs."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save, save_file

PROJECTIONS = (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))
SIZE = 64  # pixels; the pipelines are called directly, so the request's minimum does not apply


# ---- the shared models' full state --------------------------------------------------------
def _modules(models):
    base, refiner = models.base, models.refiner
    return {
        "unet": base.unet,
        "text_encoder": base.text_encoder,
        "text_encoder_2": base.text_encoder_2,
        "vae": base.vae,
        "refiner.unet": refiner.unet,
        "refiner.text_encoder_2": refiner.text_encoder_2,
    }


def _tokenizers(models):
    base, refiner = models.base, models.refiner
    return {
        "tokenizer": base.tokenizer,
        "tokenizer_2": base.tokenizer_2,
        "refiner.tokenizer_2": refiner.tokenizer_2,
    }


def snapshot(models) -> dict:
    """Every tensor (cloned), module layout and tokenizer state the tests must see unchanged."""
    state = {}
    for name, module in _modules(models).items():
        state[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state[name + "/layout"] = [(n, type(m).__name__) for n, m in module.named_modules()]
        config = module.config
        state[name + "/config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for name, tok in _tokenizers(models).items():
        state[name] = (len(tok), tok.get_vocab(), tok("a photo of <s0><s1> TOK").input_ids)
    return state


def assert_unchanged(models, before: dict) -> None:
    after = snapshot(models)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if (
            isinstance(value, dict)
            and value
            and isinstance(next(iter(value.values())), torch.Tensor)
        ):
            assert list(after[name]) == list(value), f"{name}: tensor names changed"
            for key, tensor in value.items():
                got = after[name][key]
                assert got.dtype == tensor.dtype and torch.equal(got, tensor), f"{name}.{key}"
        else:
            assert after[name] == value, name


# ---- artifacts -----------------------------------------------------------------------------
def attention_processors(unet) -> list[str]:
    return list(unet.attn_processors)


def old_format_lora(unet, rank: int = 4, seed: int = 0, std: float = 0.3) -> dict:
    """The Replicate trainer's lora.safetensors layout, for the tiny UNet."""
    modules = dict(unet.named_modules())
    g = torch.Generator().manual_seed(seed)
    out = {}
    for proc in attention_processors(unet):
        attn = proc.removesuffix(".processor")
        for old, sub in PROJECTIONS:
            layer = modules[f"{attn}.{sub}"]
            out[f"{proc}.{old}_lora.down.weight"] = (
                torch.randn(rank, layer.in_features, generator=g) * std
            )
            out[f"{proc}.{old}_lora.up.weight"] = (
                torch.randn(layer.out_features, rank, generator=g) * std
            )
    return out


def updates_from_old(old: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (down, up), read independently of the product's converter."""
    out = {}
    for key, down in old.items():
        if key.endswith(".down.weight"):
            proc, rest = key.split(".processor.")
            proj = rest.split("_lora.")[0]
            module = f"{proc}.{dict(PROJECTIONS)[proj]}"
            out[module] = (down, old[key.replace(".down.", ".up.")])
    return out


def hand_applied(unet, updates: dict, scale: float):
    """A deep copy of `unet` with W + scale * up @ down written into each named Linear."""
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, (down, up) in updates.items():
            modules[name].weight += scale * (up @ down)
    return merged


def kohya_lora(unet, rank: int = 4, alpha: float = 2.0, seed: int = 1) -> tuple[dict, dict]:
    """(kohya state dict, updates with alpha/rank folded into up) for attention + proj_in."""
    modules = dict(unet.named_modules())
    g = torch.Generator().manual_seed(seed)
    state, updates = {}, {}
    for name, layer in modules.items():
        if not name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in")):
            continue
        down = torch.randn(rank, layer.in_features, generator=g) * 0.3
        up = torch.randn(layer.out_features, rank, generator=g) * 0.3
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(alpha)
        updates[name] = (down, up * (alpha / rank))
    return state, updates


def text_encoder_kohya(models, rank: int = 4, seed: int = 4) -> dict:
    """kohya keys (lora_te1_/lora_te2_) for every attention and MLP layer of both encoders."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    encoders = (("lora_te1_", models.base.text_encoder), ("lora_te2_", models.base.text_encoder_2))
    for prefix, te in encoders:
        for name, layer in te.named_modules():
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
                flat = name.removeprefix("text_model.").replace(".", "_")
                key = f"{prefix}text_model_{flat}"
                state[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=g)
                state[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=g)
                state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


def embeddings_pti(rows: int, dims: tuple[int, int], seed: int = 2) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save(
        {f"text_encoders_{i}": torch.randn(rows, d, generator=g) for i, d in enumerate(dims)}
    )


def trained_token_files(models) -> dict[str, bytes]:
    """The members of a Replicate trainer's tar that add the tokens <s0><s1> as "TOK"."""
    dims = (
        models.base.text_encoder.config.hidden_size,
        models.base.text_encoder_2.config.hidden_size,
    )
    return {
        "embeddings.pti": embeddings_pti(2, dims),
        "special_params.json": params_json({"TOK": "<s0><s1>"}),
    }


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def params_json(params: dict) -> bytes:
    return json.dumps(params).encode()


def save_safetensors(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# ---- running the shared models ------------------------------------------------------------
def run(models, prompt: str = "a photo of a cat", seed: int = 1, unet=None, steps: int = 2):
    """The base txt2img pipeline over the shared modules (or another UNet): float pixels."""
    from diffusers import EulerDiscreteScheduler

    pipe = models.pipeline(
        "txt2img", EulerDiscreteScheduler.from_config(models.scheduler_config("base"))
    )
    if unet is not None:
        pipe = pipe.__class__(
            **{**pipe.components, "unet": unet},
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    out = pipe(
        prompt=prompt,
        num_inference_steps=steps,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return np.asarray(out.images, dtype=np.float64)
