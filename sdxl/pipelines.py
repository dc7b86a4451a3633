"""Load the base and the refiner once; hand out per-request pipelines that share their modules.

Nothing here is mutated by a request. `Models.pipeline()` builds a lightweight diffusers
pipeline object around the already-loaded modules and a fresh scheduler, so a request can
never change what the next one sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxl.config import BASE_DIR, REFINER_DIR, Runtime
from sdxl.safety import SafetyChecker, check_folder, load_safety_checker

log = logging.getLogger(__name__)

# Each mode's diffusers class, by stage.
PIPELINE_CLASSES = {
    "txt2img": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
    "refiner": "StableDiffusionXLImg2ImgPipeline",
}


class WeightsMissingError(RuntimeError):
    """The weights folder lacks what setup() needs."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA and float32 on the CPU."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


def check_weights(root: Path) -> None:
    """Fail early, naming the command that fixes it, when the layout is incomplete."""
    needed = [root / BASE_DIR / "model_index.json", root / REFINER_DIR / "model_index.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise WeightsMissingError(
            f"SDXL weights not found in {root} (missing {', '.join(missing)}). "
            f"Run `python -m sdxl weights download {root}` for the real SDXL 1.0 weights, "
            f"or `python -m sdxl weights tiny {root}` for a tiny random-weight test model; "
            "set SDXL_WEIGHTS_DIR to use another folder."
        )
    check_folder(root)


@dataclass
class Models:
    """The loaded modules of base and refiner, and the pristine scheduler configs."""

    base: Any  # StableDiffusionXLPipeline, as loaded
    refiner: Any  # StableDiffusionXLImg2ImgPipeline sharing the base's text_encoder_2 and vae
    device: torch.device
    dtype: torch.dtype
    safety_checker: SafetyChecker
    progress_bars: bool = True  # tqdm bars per stage (Replicate shows them in the logs)

    def pipeline(self, stage: str, scheduler: Any) -> Any:
        """A pipeline of `stage`'s class over the shared modules, with its own scheduler."""
        import diffusers

        source = self.refiner if stage == "refiner" else self.base
        cls = getattr(diffusers, PIPELINE_CLASSES[stage])
        components = {**source.components, "scheduler": scheduler}
        options = {"force_zeros_for_empty_prompt": source.config.force_zeros_for_empty_prompt}
        if stage != "txt2img":
            options["requires_aesthetics_score"] = stage == "refiner"
        pipe = cls(**components, **options, add_watermarker=False)
        pipe.set_progress_bar_config(disable=not self.progress_bars)
        return pipe

    def scheduler_config(self, stage: str) -> dict:
        """The scheduler config as loaded from disk (a copy: callers may not change it)."""
        source = self.refiner if stage == "refiner" else self.base
        return dict(source.scheduler.config)


def load_models(runtime: Runtime) -> Models:
    """Load base and refiner from `runtime.weights_dir` once, sharing what SDXL shares."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    root = runtime.weights_dir
    check_weights(root)
    device = pick_device()
    dtype = pick_dtype(runtime.dtype, device)
    started = time.perf_counter()
    base = StableDiffusionXLPipeline.from_pretrained(
        root / BASE_DIR, dtype=dtype, use_safetensors=True, add_watermarker=False
    )
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        root / REFINER_DIR,
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
        tokenizer_2=base.tokenizer_2,
        dtype=dtype,
        use_safetensors=True,
        add_watermarker=False,
    )
    base.to(device)
    refiner.to(device)
    for module in (base.unet, base.vae, base.text_encoder, base.text_encoder_2, refiner.unet):
        module.requires_grad_(False).eval()
    log.info(
        "loaded SDXL base and refiner from %s on %s in %s in %.1f s",
        root.resolve(),
        device,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - started,
    )
    safety_checker = load_safety_checker(root, device, dtype)
    return Models(base, refiner, device, dtype, safety_checker)
