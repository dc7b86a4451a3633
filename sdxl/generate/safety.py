"""The Stable Diffusion safety checker: which generated images to hold back.

`StableDiffusionSafetyChecker` (a CLIP vision model and concept embeddings with per-concept
thresholds) reads DIR/safety_checker/, laid out as CompVis/stable-diffusion-safety-checker
(config.json, model.safetensors, preprocessor_config.json), safetensors only. `check` returns
the checker's own verdicts and changes no image: the callers decide, Cog by leaving flagged
images out, the REST API by returning them black (`sdxl.images.outputs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdxl.config import SAFETY_DIR

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
FILES = ("config.json", WEIGHTS_NAME, "preprocessor_config.json")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DIFFUSERS_LOGGER = "diffusers.pipelines.stable_diffusion.safety_checker"


class SafetyCheckerError(RuntimeError):
    """DIR/safety_checker is missing or holds something other than safetensors weights."""


@dataclass(frozen=True)
class SafetyChecker:
    model: Any  # StableDiffusionSafetyChecker, on `device` in `dtype`, eval mode
    processor: Any  # CLIPImageProcessorPil
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def check(self, images: list[Image.Image], on_device=None) -> list[bool]:
        """One verdict per image, True meaning flagged, by the checker's own thresholds. The
        preprocessing runs on the CPU in the caller's thread; the model's forward is handed to
        `on_device` when it is given (the engine's `DeviceTasks.call`: one job on the device at
        a time)."""
        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        # forward() blacks out flagged entries of `images`: hand it throwaway placeholders.
        placeholders = [np.zeros(1) for _ in images]

        def forward():
            clip_input = pixels.to(device=self.device, dtype=self.dtype)
            return self.model(clip_input=clip_input, images=placeholders)[1]

        verdicts = forward() if on_device is None else on_device(forward)
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


def _hide_black_image_notice(record: logging.LogRecord) -> bool:
    """diffusers announces black images that we never return; our own log line replaces it."""
    return not record.getMessage().startswith("Potential NSFW content was detected")


def _indices(flags: list[bool]) -> list[int]:
    return [i for i, flagged in enumerate(flags) if flagged]
