"""A full-size SDXL 1.0 with random weights, offline, in the layout of `weights download`.

Every module is SDXL's real configuration (`sdxl_configs`), declared on the meta device and
written straight to fp16 safetensors one tensor at a time: no module is ever materialised and
no float32 copy of a model is made. Random weights time exactly like real ones, so every
benchmark can run at full size where the Hub cannot be reached. The tokenizers are CLIP's real
BPE files when `open_clip_torch` is installed (`pip install --no-deps open_clip_torch`); the
images it makes are noise.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdxl.builders import sdxl_configs as configs
from sdxl.builders.tiny import SDXL_SCHEDULER_CONFIG, move_layout
from sdxl.builders.tiny_control import build_tiny_depth_annotator, controlnet_config
from sdxl.builders.tiny_ip_adapter import encoder_folder, write_ip_adapters
from sdxl.builders.tiny_train import build_tiny_helpers
from sdxl.builders.tiny_upscalers import build_tiny_upscalers
from sdxl.builders.tokenizer import write_tokenizer
from sdxl.config import BASE_DIR, CONTROLNET_DIR, LORAS_DIR, REFINER_DIR, SAFETY_DIR, UNION_MODEL

CLIP_MERGES = 49152 - 256 - 2  # the BPE merges CLIP uses
DTYPE = torch.float16


def random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """fp16 random values for every tensor of a meta-device `module`: norms 1, biases 0,
    embeddings N(0, 0.02), weights N(0, 0.5 / sqrt(fan_in)) so activations stay finite."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, meta in module.state_dict().items():
        shape = tuple(meta.shape)
        if not meta.is_floating_point():
            out[name] = torch.zeros(shape, dtype=meta.dtype)
        elif "norm" in name and name.endswith("weight"):
            out[name] = torch.ones(shape, dtype=DTYPE)
        elif name.endswith("bias") or len(shape) <= 1:
            out[name] = torch.zeros(shape, dtype=DTYPE)
        else:
            fan_in = math.prod(shape[1:])
            std = 0.02 if "embed" in name else 0.5 / math.sqrt(fan_in)
            out[name] = (torch.randn(shape, generator=g) * std).to(DTYPE)
    return out


def _write(folder: Path, weights_name: str, module_fn: Callable, seed: int, config_fn) -> int:
    """Declare the module on the meta device, write its config and random fp16 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        module = module_fn()
    config_fn(module, folder)
    state = random_state(module, seed)
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})
    return sum(t.numel() for t in state.values())


def _diffusers(cls_name: str, config: dict):
    import diffusers

    cls = getattr(diffusers, cls_name)
    return (lambda: cls.from_config(config)), (lambda m, folder: m.save_config(folder))


def _clip_text(cls_name: str, values: dict):
    import transformers

    config = transformers.CLIPTextConfig(**values)
    cls = getattr(transformers, cls_name)
    config.architectures = [cls_name]
    return (lambda: cls(config)), (lambda m, folder: config.save_pretrained(folder))


_VISION = "CLIPVisionModelWithProjection"  # IP-Adapter's image encoder


def _clip_vision(values: dict):
    """CLIP's vision model with its projection, as h94's models/image_encoder is saved."""
    import transformers

    config = transformers.CLIPVisionConfig(**values)
    config.architectures = [_VISION]
    cls = transformers.CLIPVisionModelWithProjection
    return (lambda: cls(config)), (lambda m, folder: config.save_pretrained(folder))


def clip_bpe_file() -> Path | None:
    """open_clip's copy of CLIP's BPE merges, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


def write_clip_tokenizer(folder: Path, pad_token: str, bpe: Path) -> None:
    """The tokenizer files of openai/clip-vit-large-patch14, from CLIP's BPE file."""
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : CLIP_MERGES + 1]
    write_tokenizer(folder, pad_token, [tuple(line.split()) for line in lines])


def build_random_full(root: Path, log=print, control: bool = True, ip_adapter: bool = True) -> Path:
    """Write base/, refiner/, safety_checker/ and loras/ under `root` (about 12 GB), and the
    trainer's helpers (train/) as the tiny builder makes them: their captions and masks are
    noise at any size, so full-size copies would only cost 2.5 GB.

    `control`: also controlnet/{canny,depth,union}/ at full size (2.5 GB each, fp16) and the
    tiny depth annotator (annotators/depth/: its maps are noise at any size).
    `ip_adapter`: also ip_adapter/ at full size (sdxl.builders.tiny_ip_adapter's layout): the
    ViT-H image encoder (632M parameters, 1.3 GB in fp16) and the three adapters (0.70, 0.85
    and 0.85 GB), whose image projections take that encoder's embeddings and hidden states."""
    bpe = clip_bpe_file()
    if bpe is None:
        raise RuntimeError(
            "CLIP's tokenizer files come from the open_clip_torch package: "
            "`pip install --no-deps open_clip_torch` (--no-deps: it would pull another torch)"
        )
    root = Path(root)
    staging = root / ".random-full-staging"
    shutil.rmtree(staging, ignore_errors=True)
    base, refiner = staging / BASE_DIR, staging / REFINER_DIR
    parts = [  # (folder, library, class, config, seed)
        (base / "unet", "diffusers", "UNet2DConditionModel", configs.BASE_UNET, 1),
        (refiner / "unet", "diffusers", "UNet2DConditionModel", configs.REFINER_UNET, 2),
        (base / "text_encoder", "transformers", "CLIPTextModel", configs.TEXT_ENCODER, 3),
        (
            base / "text_encoder_2",
            "transformers",
            "CLIPTextModelWithProjection",
            configs.TEXT_ENCODER_2,
            4,
        ),
        (base / "vae", "diffusers", "AutoencoderKL", configs.VAE, 5),
    ]
    if control:
        parts += _control_parts(staging / CONTROLNET_DIR)
    if ip_adapter:
        parts.append((encoder_folder(staging), "transformers", _VISION, configs.IMAGE_ENCODER, 10))
    for folder, library, cls_name, config, seed in parts:
        if library == "diffusers":
            module_fn, config_fn = _diffusers(cls_name, config)
            weights_name = "diffusion_pytorch_model.safetensors"
        elif cls_name == _VISION:
            module_fn, config_fn = _clip_vision(config)
            weights_name = "model.safetensors"
        else:
            module_fn, config_fn = _clip_text(cls_name, config)
            weights_name = "model.safetensors"
        count = _write(folder, weights_name, module_fn, seed, config_fn)
        log(f"{folder.relative_to(staging)}: {count / 1e9:.3f} B parameters")
    _safety_checker(staging / SAFETY_DIR)
    _offset_lora(staging / LORAS_DIR)
    for pipe, index in ((base, configs.BASE_INDEX), (refiner, configs.REFINER_INDEX)):
        (pipe / "model_index.json").write_text(json.dumps(index, indent=2))
        (pipe / "scheduler").mkdir(exist_ok=True)
        scheduler = {"_class_name": "EulerDiscreteScheduler", **SDXL_SCHEDULER_CONFIG}
        (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    write_clip_tokenizer(base / "tokenizer", "<|endoftext|>", bpe)
    write_clip_tokenizer(base / "tokenizer_2", "!", bpe)
    build_tiny_helpers(staging)
    build_tiny_upscalers(staging, configs.RRDBNET)
    if control:
        build_tiny_depth_annotator(staging)
    if ip_adapter:
        _ip_adapters(staging, log)
    return move_layout(staging, root)


def _ip_adapters(staging: Path, log) -> None:
    """h94's three SDXL adapters at their real shapes (the base UNet's cross-attention layers,
    the ViT-H encoder's widths), seeded random fp16, in h94's original keys."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.BASE_UNET)
    write_ip_adapters(staging, unet, configs.IMAGE_ENCODER, dtype=DTYPE, log=log)


def _control_parts(folder: Path) -> list[tuple]:
    """ControlNets configured from the base UNet's config, as diffusers' SDXL ControlNets and
    xinsir's union model are: (folder, library, class, config, seed) rows for `_write`."""
    union = controlnet_config(configs.BASE_UNET, union=True)
    return [
        (folder / name, "diffusers", "ControlNetModel", controlnet_config(configs.BASE_UNET), seed)
        for name, seed in (("canny", 7), ("depth", 8))
    ] + [(folder / UNION_MODEL, "diffusers", "ControlNetUnionModel", union, 9)]


def _safety_checker(folder: Path) -> None:
    """The checker's real shapes; its thresholds set so that it never flags (random weights
    would flag at random)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        vision_config=configs.SAFETY_VISION, projection_dim=configs.SAFETY_PROJECTION_DIM
    )
    config.architectures = ["StableDiffusionSafetyChecker"]
    folder.mkdir(parents=True)
    with torch.device("meta"):
        model = StableDiffusionSafetyChecker(config)
    state = random_state(model, seed=6)
    state["concept_embeds_weights"].fill_(2.0)
    state["special_care_embeds_weights"].fill_(2.0)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(configs.SAFETY_PREPROCESSOR, indent=2)
    )


def _offset_lora(folder: Path) -> None:
    from diffusers import UNet2DConditionModel

    from sdxl.builders.random_lora import random_kohya_lora

    folder.mkdir(parents=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.BASE_UNET)
    state = {k: v.to(DTYPE) for k, v in random_kohya_lora(unet, rank=16).items()}
    save_file(state, str(folder / "offset.safetensors"))
