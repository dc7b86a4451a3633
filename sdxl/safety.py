"""The Stable Diffusion safety checker: which generated images to hold back.

`StableDiffusionSafetyChecker` (a CLIP vision model and concept embeddings with per-concept
thresholds) reads DIR/safety_checker/, laid out as CompVis/stable-diffusion-safety-checker
(config.json, model.safetensors, preprocessor_config.json), safetensors only. `check` returns
the checker's own verdicts and changes no image: the callers decide, Cog by leaving flagged
images out (`filter_flagged`), the REST API by returning them black (`blacken`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdxl.errors import InputError

log = logging.getLogger(__name__)

SAFETY_DIR = "safety_checker"
WEIGHTS_NAME = "model.safetensors"
FILES = ("config.json", WEIGHTS_NAME, "preprocessor_config.json")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DIFFUSERS_LOGGER = "diffusers.pipelines.stable_diffusion.safety_checker"

# CLIP's image preprocessing, as in the real preprocessor_config.json (224 px there).
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_TINY_SIDE = 32


class SafetyCheckerError(RuntimeError):
    """DIR/safety_checker is missing or holds something other than safetensors weights."""


class AllFlaggedError(InputError):
    """Every image of a request was flagged, so a Cog prediction has nothing to return."""


@dataclass(frozen=True)
class SafetyChecker:
    model: Any  # StableDiffusionSafetyChecker, on `device` in `dtype`, eval mode
    processor: Any  # CLIPImageProcessorPil
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def check(self, images: list[Image.Image]) -> list[bool]:
        """One verdict per image, True meaning flagged, by the checker's own thresholds."""
        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        # forward() blacks out flagged entries of `images`: hand it throwaway placeholders.
        placeholders = [np.zeros(1) for _ in images]
        clip_input = pixels.to(device=self.device, dtype=self.dtype)
        _, verdicts = self.model(clip_input=clip_input, images=placeholders)
        flags = [bool(v) for v in verdicts]
        if any(flags):
            log.info("safety checker flagged image(s) %s of %d", _indices(flags), len(flags))
        return flags


def load_safety_checker(root: Path, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    """Load DIR/safety_checker once; fails naming the command that fixes a missing folder."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessorPil

    folder = check_folder(root)
    model, info = StableDiffusionSafetyChecker.from_pretrained(
        folder, use_safetensors=True, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"]:  # transformers would start those from random values, silently
        missing = ", ".join(sorted(info["missing_keys"]))
        raise SafetyCheckerError(
            f"{folder / WEIGHTS_NAME} lacks {missing}; it is not the safety checker's checkpoint. "
            f"Run `python -m sdxl weights download {root}` to fetch it again"
        )
    model.to(device).requires_grad_(False).eval()
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    logging.getLogger(_DIFFUSERS_LOGGER).addFilter(_hide_black_image_notice)
    return SafetyChecker(model=model, processor=processor, device=device, dtype=dtype)


def check_folder(root: Path) -> Path:
    """DIR/safety_checker, if it has every file with the weights as safetensors; else raise
    SafetyCheckerError naming the command that fixes it. Reads no weights."""
    folder = Path(root) / SAFETY_DIR
    missing = [name for name in FILES if not (folder / name).is_file()]
    if not missing:
        return folder
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in _PICKLES)
    if WEIGHTS_NAME in missing and pickles:
        raise SafetyCheckerError(
            f"{folder} holds {', '.join(pickles)} but no {WEIGHTS_NAME}: only safetensors "
            "weights are loaded, never pickles. Run `python -m sdxl weights download "
            f"{root}` to fetch the safetensors ones"
        )
    raise SafetyCheckerError(
        f"safety checker not found in {folder} (missing {', '.join(missing)}). "
        f"Run `python -m sdxl weights download {root}` for the real one, or "
        f"`python -m sdxl weights tiny {root}` for a tiny test model"
    )


def filter_flagged(
    images: list[Image.Image], flags: list[bool]
) -> tuple[list[Image.Image], list[int]]:
    """(the images not flagged, their indices); AllFlaggedError if none is left."""
    _same_length(images, flags)
    kept = [i for i, flagged in enumerate(flags) if not flagged]
    if images and not kept:
        n = len(images)
        what = "the image was" if n == 1 else f"all {n} images were"
        raise AllFlaggedError(
            f"{what} flagged by the safety checker; try another prompt or seed, "
            "or set disable_safety_checker"
        )
    return [images[i] for i in kept], kept


def blacken(images: list[Image.Image], flags: list[bool]) -> list[Image.Image]:
    """The images with each flagged one replaced by a black image of its size and mode."""
    _same_length(images, flags)
    return [Image.new(im.mode, im.size) if f else im for im, f in zip(images, flags, strict=True)]


def build_tiny_safety_checker(folder: Path, flag_everything: bool = False) -> Path:
    """Write a tiny random-weight checker into `folder`, in the real checker's file layout.

    Its verdicts come from its thresholds alone, whatever the image: a concept is flagged when
    cosine similarity minus threshold is above 0, and cosine similarity lies in [-1, 1], so a
    threshold of 2 never flags and one of -2 flags every image.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(6)
    model = StableDiffusionSafetyChecker(_tiny_config())
    with torch.no_grad():
        model.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        model.special_care_embeds_weights.fill_(2.0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {
        "crop_size": _TINY_SIDE,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "resample": 3,
        "size": _TINY_SIDE,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


def _tiny_config():
    from transformers import CLIPConfig

    text = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=62,
        eos_token_id=63,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_TINY_SIDE,
        patch_size=8,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def _hide_black_image_notice(record: logging.LogRecord) -> bool:
    """diffusers announces black images that we never return; our own log line replaces it."""
    return not record.getMessage().startswith("Potential NSFW content was detected")


def _indices(flags: list[bool]) -> list[int]:
    return [i for i, flagged in enumerate(flags) if flagged]


def _same_length(images: list[Image.Image], flags: list[bool]) -> None:
    if len(images) != len(flags):
        raise ValueError(f"{len(images)} images but {len(flags)} safety flags")
