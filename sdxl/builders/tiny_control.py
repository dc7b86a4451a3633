"""Control models for `weights tiny` and `weights random-full`, in the layout of the real ones.

controlnet/canny/ and controlnet/depth/: diffusers' `ControlNetModel`; controlnet/union/:
`ControlNetUnionModel` with xinsir's promax control types (8); each a config.json and a
diffusion_pytorch_model.safetensors, configured from the base UNet's config. Their zero
convolutions are seeded random, never zero: a zero ControlNet changes nothing, and every test
that compares a controlled image with diffusers' would pass whatever the control did.
annotators/depth/: a tiny Depth Anything V2 (a Dinov2 backbone) in the layout of
depth-anything/Depth-Anything-V2-Small-hf, with its image processor at 56 px.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from sdxl.config import ANNOTATORS_DIR, CONTROLNET_DIR, UNION_MODEL

CONTROL_SEEDS = {"canny": 50, "depth": 51, UNION_MODEL: 52}
UNION_CONTROL_TYPES = 8  # xinsir's promax: openpose ... tile, repaint
ZERO_CONV_STD = 0.05  # the zero convolutions' seeded weights: the control shows, stays finite
DEPTH_PROCESSOR_SIDE = 56  # the tiny depth model's input side, a multiple of its 14 px patch


def controlnet_config(unet_config: dict, union: bool = False) -> dict:
    """A ControlNet's (or the union model's) config matching a UNet's, as from_unet derives it."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if union else ControlNetModel
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(unet_config).items() if k in accepted}
    config["conditioning_embedding_out_channels"] = [16, 32, 96, 256]  # SDXL ControlNets'
    if union:  # the transformer over control types runs at the first block's width
        width = config["block_out_channels"][0]
        config |= dict(num_control_type=UNION_CONTROL_TYPES, num_trans_channel=width)
        config |= dict(num_proj_channel=width)
    return config


def _seed_zero_convs(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every zero-initialised weight (the zero convolutions, the conditioning embedding's
    last conv, the union's projection) seeded N(0, ZERO_CONV_STD) values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=g) * ZERO_CONV_STD)
    return model.eval()


def tiny_controlnet(unet_config: dict, seed: int, union: bool = False) -> torch.nn.Module:
    """A seeded ControlNet (or union model) whose config matches `unet_config`."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if union else ControlNetModel
    torch.manual_seed(seed)
    return _seed_zero_convs(cls.from_config(controlnet_config(unet_config, union)), seed)


def build_tiny_controlnets(root: Path, unet_config: dict) -> Path:
    """Write `root`/controlnet/{canny,depth,union}/ for a UNet of `unet_config`."""
    folder = Path(root) / CONTROLNET_DIR
    for name, seed in CONTROL_SEEDS.items():
        model = tiny_controlnet(unet_config, seed, union=name == UNION_MODEL)
        model.save_pretrained(folder / name, safe_serialization=True)
    return folder


def tiny_depth_config():
    """Depth Anything V2's config at a few thousand parameters (Small: 384 wide, 12 layers)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=DEPTH_PROCESSOR_SIDE,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )


def build_tiny_depth_annotator(root: Path, seed: int = 53) -> Path:
    """Write `root`/annotators/depth/: config.json, model.safetensors, preprocessor_config.json
    as depth-anything/Depth-Anything-V2-Small-hf ships them, the model tiny and seeded."""
    from transformers import DepthAnythingForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = Path(root) / ANNOTATORS_DIR / "depth"
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(tiny_depth_config()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    side = DEPTH_PROCESSOR_SIDE
    processor = DPTImageProcessorPil(
        size={"height": side, "width": side},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as the real one
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(folder)
    return folder


def build_tiny_control(root: Path, unet_config: dict) -> None:
    """Every control folder `weights tiny` writes: controlnet/ and annotators/."""
    build_tiny_controlnets(root, unet_config)
    build_tiny_depth_annotator(root)
