"""Load the base and the refiner once; hand out per-request pipelines that share their modules.

Nothing here is mutated by a request. `Models.pipeline()` builds a lightweight diffusers
pipeline object around the already-loaded modules and a fresh scheduler, so a request can
never change what the next one sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sdxl.config import BASE_DIR, REFINER_DIR
from sdxl.generate.safety import SafetyChecker, check_folder, load_safety_checker
from sdxl.model import fast
from sdxl.settings import Runtime

# Each mode's diffusers class, by stage.
PIPELINE_CLASSES = {
    "txt2img": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
    "refiner": "StableDiffusionXLImg2ImgPipeline",
}
# With ControlNets, by mode: dedicated ControlNets (one, or several as diffusers'
# MultiControlNetModel) or the union model (ControlNetUnionModel, its types as control modes).
CONTROL_PIPELINE_CLASSES = {
    ("txt2img", False): "StableDiffusionXLControlNetPipeline",
    ("img2img", False): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionXLControlNetInpaintPipeline",
    ("txt2img", True): "StableDiffusionXLControlNetUnionPipeline",
    ("img2img", True): "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionXLControlNetUnionInpaintPipeline",
}


class WeightsMissingError(RuntimeError):
    """The weights folder lacks what setup() needs."""


def pick_device(setting: str = "auto") -> torch.device:
    """`auto` is CUDA where there is a GPU, else the CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SDXL_DEVICE=cuda, but torch sees no CUDA GPU; use auto or cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA, bfloat16 on a CPU that has it natively, else float32."""
    if setting == "auto":
        return fast.auto_dtype(device)
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
    fused: dict[str, dict] = field(default_factory=dict)  # stage -> fused QKV processors
    channels_last: bool = False  # the fast path's memory format (control models follow it)
    vae_tile_above: int = 2560 * 1024  # pixels beyond which the VAE decodes in tiles
    compiled: Any = None  # sdxl.model.compiled.Compiled, with SDXL_COMPILE=1
    warmup_shapes: tuple[tuple[int, int], ...] = ()  # sizes the engine warms up before serving

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

    @cached_property
    def upscalers(self) -> Any:
        """The hires fix's ESRGAN-family models in weights_dir/upscalers/ (loaded on first use)."""
        from sdxl.upscale.models import Upscalers

        return Upscalers(self.weights_dir, self.device, self.dtype)

    def pipeline(
        self,
        stage: str,
        scheduler: Any,
        unet: Any = None,
        vae: Any = None,
        controlnets: list | None = None,
        image_prompt: Any = None,
    ) -> Any:
        """A pipeline of `stage`'s class over the shared modules, with its own scheduler, and
        another UNet or VAE object when given (a resident fine-tune, compiled modules); with
        `controlnets` (resident control models, `sdxl.control.resident`), the ControlNet
        pipeline of the mode over the same modules; with `image_prompt` (an installed
        IP-Adapter, `sdxl.control.ip_adapter`), its image encoder, at its scale."""
        import diffusers

        source = self.refiner if stage == "refiner" else self.base
        components = {**source.components, "scheduler": scheduler}
        name = PIPELINE_CLASSES[stage]
        if controlnets:
            union = type(controlnets[0]).__name__ == "ControlNetUnionModel"
            name = CONTROL_PIPELINE_CLASSES[(stage, union)]
            components["controlnet"] = controlnets[0] if len(controlnets) == 1 else controlnets
        if image_prompt is not None:
            components.update(image_prompt.components)
        cls = getattr(diffusers, name)
        if unet is not None:
            components["unet"] = unet
        if vae is not None:
            components["vae"] = vae
        options = {"force_zeros_for_empty_prompt": source.config.force_zeros_for_empty_prompt}
        if stage != "txt2img":
            options["requires_aesthetics_score"] = stage == "refiner"
        pipe = cls(**components, **options, add_watermarker=False)
        pipe.set_progress_bar_config(disable=not self.progress_bars)
        if image_prompt is not None:
            pipe.set_ip_adapter_scale(image_prompt.scale)  # diffusers' own, on the installed one
        return pipe

    def scheduler_config(self, stage: str) -> dict:
        """The scheduler config as loaded from disk (a copy: callers may not change it)."""
        return dict(self.scheduler_configs["refiner" if stage == "refiner" else "base"])


def read_models(runtime: Runtime) -> Models:
    """Base and refiner from `runtime.weights_dir`, loaded once and sharing what SDXL shares
    (the fast path is applied by `sdxl.model.loading`)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    root = runtime.weights_dir
    check_weights(root)
    device = pick_device(runtime.device)
    dtype = pick_dtype(runtime.dtype, device)
    cuda = device.type == "cuda"
    # On CUDA the weights go straight from the files to the GPU (no copy in host memory).
    placement = {"device_map": str(device)} if cuda else {}
    options = dict(dtype=dtype, use_safetensors=True, add_watermarker=False, **placement)
    base = StableDiffusionXLPipeline.from_pretrained(root / BASE_DIR, **options)
    fast.check_vae(base.vae, dtype)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        root / REFINER_DIR,
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
        tokenizer_2=base.tokenizer_2,
        **options,
    )
    if not cuda:
        base.to(device)
        refiner.to(device)
    for module in (base.unet, base.vae, base.text_encoder, base.text_encoder_2, refiner.unet):
        module.requires_grad_(False).eval()
    safety_checker = load_safety_checker(root, device, dtype)
    models = Models(base, refiner, device, dtype, safety_checker, weights_dir=root)
    models.vae_tile_above = runtime.vae_tile_above
    return models
