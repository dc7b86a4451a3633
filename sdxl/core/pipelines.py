"""Load the base and the refiner once; hand out per-request pipelines that share their modules.

Nothing here is mutated by a request. `Models.pipeline()` builds a lightweight diffusers
pipeline object around the already-loaded modules and a fresh scheduler, so a request can
never change what the next one sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdxl.config import BASE_DIR, REFINER_DIR, Runtime
from sdxl.core.safety import SafetyChecker, check_folder, load_safety_checker

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
    """The loaded modules of base and refiner, and what is read from them once at load, so
    that work off the engine's lock (checking trained weights) never reads a live module."""

    base: Any  # StableDiffusionXLPipeline, as loaded
    refiner: Any  # StableDiffusionXLImg2ImgPipeline sharing the base's text_encoder_2 and vae
    device: torch.device
    dtype: torch.dtype
    safety_checker: SafetyChecker
    weights_dir: Path = Path(".")
    progress_bars: bool = False  # tqdm bars per stage; the engine logs each step as a line
    scheduler_configs: dict[str, dict] = field(default_factory=dict)  # pristine, per stage
    unet_shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]] = field(default_factory=dict)
    unet_linears: dict[str, tuple[int, int]] = field(default_factory=dict)  # (in, out) features

    def __post_init__(self) -> None:
        for stage, pipe in (("base", self.base), ("refiner", self.refiner)):
            self.scheduler_configs.setdefault(stage, dict(pipe.scheduler.config))
        if not self.unet_shapes:
            state = self.base.unet.state_dict()
            self.unet_shapes = {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}
        if not self.unet_linears:
            self.unet_linears = {
                name: (m.in_features, m.out_features)
                for name, m in self.base.unet.named_modules()
                if isinstance(m, torch.nn.Linear)
            }

    def pipeline(self, stage: str, scheduler: Any, unet: Any = None) -> Any:
        """A pipeline of `stage`'s class over the shared modules, with its own scheduler (and,
        for a base stage, another UNet when one is given: a resident fine-tune)."""
        import diffusers

        source = self.refiner if stage == "refiner" else self.base
        cls = getattr(diffusers, PIPELINE_CLASSES[stage])
        components = {**source.components, "scheduler": scheduler}
        if unet is not None:
            components["unet"] = unet
        options = {"force_zeros_for_empty_prompt": source.config.force_zeros_for_empty_prompt}
        if stage != "txt2img":
            options["requires_aesthetics_score"] = stage == "refiner"
        pipe = cls(**components, **options, add_watermarker=False)
        pipe.set_progress_bar_config(disable=not self.progress_bars)
        return pipe

    def scheduler_config(self, stage: str) -> dict:
        """The scheduler config as loaded from disk (a copy: callers may not change it)."""
        return dict(self.scheduler_configs["refiner" if stage == "refiner" else "base"])


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
    return Models(base, refiner, device, dtype, safety_checker, weights_dir=root)
