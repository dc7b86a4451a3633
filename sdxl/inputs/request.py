"""A generation request: what one job asks of the engine. Its values are checked by
`sdxl.inputs.rules` (the APIs' boundary, then the model's rules when the job is prepared).

No torch here: the APIs build requests before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdxl.config import COG_INPUTS, MAX_SEED
from sdxl.inputs.control_units import ControlUnit
from sdxl.inputs.lora_refs import LoraRef

if TYPE_CHECKING:
    from sdxl.images.inputs import ImageSource


def _default(name: str):
    return dataclasses.field(default=COG_INPUTS[name].default)


@dataclass(frozen=True)
class Request:
    """Everything one prediction needs; defaults are those of the Cog predictor.

    `image` and `mask` are where the images come from (`ImageSource`: bytes or a URL), which
    the engine decodes when it prepares the job, or images decoded already.
    """

    prompt: str = _default("prompt")
    negative_prompt: str = _default("negative_prompt")
    prompt_2: str | None = _default("prompt_2")
    negative_prompt_2: str | None = _default("negative_prompt_2")
    style_selected: str | None = _default("style_selected")
    image: Image.Image | ImageSource | None = _default("image")
    mask: Image.Image | ImageSource | None = _default("mask")
    width: int = _default("width")
    height: int = _default("height")
    aspect_ratio: str | None = _default("aspect_ratio")
    num_outputs: int = _default("num_outputs")
    scheduler: str = _default("scheduler")
    num_inference_steps: int = _default("num_inference_steps")
    guidance_scale: float = _default("guidance_scale")
    guidance_scale_refiner: float | None = _default("guidance_scale_refiner")
    prompt_strength: float = _default("prompt_strength")
    seed: int | None = _default("seed")
    refine: str = _default("refine")
    high_noise_frac: float = _default("high_noise_frac")
    refine_steps: int | None = _default("refine_steps")
    timestep_spacing: str | None = _default("timestep_spacing")
    apply_watermark: bool = _default("apply_watermark")
    lora_scale: float = _default("lora_scale")
    replicate_weights: str | None = _default("replicate_weights")
    disable_safety_checker: bool = _default("disable_safety_checker")
    cache_interval: int = _default("cache_interval")
    prompt_syntax: str = _default("prompt_syntax")  # "plain", or "a1111": (word:1.3), BREAK
    # LoRAs applied at their own weights, in order: the `loras` input and <lora:..> tags
    loras: tuple[LoraRef, ...] = ()
    # Hires fix (sdxl.generate.hires): a second img2img pass at a larger size; None: none
    hires_scale: float | None = _default("hires_scale")
    hires_upscaler: str = _default("hires_upscaler")
    hires_steps: int = _default("hires_steps")  # 0: num_inference_steps
    hires_strength: float = _default("hires_strength")
    hires_width: int | None = None  # A1111's hr_resize_x / hr_resize_y, over hires_scale
    hires_height: int | None = None
    hires_scheduler: str | None = None  # A1111's hr_sampler_name (None: the first pass's)
    hires_timestep_spacing: str | None = None
    hires_prompt: str | None = None  # A1111's hr_prompt (None: the first pass's prompt)
    hires_negative_prompt: str | None = None
    # ControlNet units (sdxl.inputs.control_units): at most three, run together
    controls: tuple[ControlUnit, ...] = ()
    return_control_maps: bool = _default("return_control_maps")  # maps first, then images
    # IP-Adapter (sdxl.inputs.image_prompt): the reference images one adapter follows
    ip_adapter_images: tuple[Image.Image | ImageSource, ...] = ()
    ip_adapter_model: str = _default("ip_adapter_model")
    ip_adapter_scale: float = _default("ip_adapter_scale")
    ip_adapter_block_scales: dict | None = None  # diffusers' per-block scales, over the scale
    lora_name: str | None = None  # REST API only: a LoRA shipped with the weights ("offset")
    lora_id: str | None = None  # REST API only: <SDXL_LORA_DIR>/<id>.safetensors
    # A1111's API only: layers skipped past the penultimate one (None: SDXL's usual encoding)
    clip_skip: int | None = None
    # Trained weights in this server's files, set by the server (never from an input: see
    # SERVER_FIELDS): a trained version's trained_model.tar for the version's predictions, or
    # the caller's upload that replicate_weights named; replicate_weights wins.
    trained_tar: str | None = None

    @property
    def mode(self) -> str:
        if self.image is None:
            return "txt2img"
        return "img2img" if self.mask is None else "inpaint"

    @property
    def hires(self) -> bool:
        """Whether a second pass runs at a larger size (the hires fix)."""
        sizes = (self.hires_scale, self.hires_width, self.hires_height)
        return any(size is not None for size in sizes)

    @property
    def hires_sampler(self) -> tuple[str, str | None]:
        """The second pass's scheduler and timestep spacing: its own, else the first pass's."""
        spacing = self.hires_timestep_spacing
        return (
            self.hires_scheduler or self.scheduler,
            self.timestep_spacing if spacing is None else spacing,
        )

    @property
    def image_prompt_scale(self) -> float | dict:
        """IP-Adapter's scale as diffusers' set_ip_adapter_scale takes it."""
        if self.ip_adapter_block_scales is not None:
            return self.ip_adapter_block_scales
        return self.ip_adapter_scale

    @property
    def adapters(self) -> AdapterSpec:
        return AdapterSpec(
            replicate_weights=self.replicate_weights or None,
            trained_tar=None if self.replicate_weights else self.trained_tar,
            lora_name=self.lora_name,
            lora_id=self.lora_id,
            lora_scale=float(self.lora_scale),
            loras=tuple(self.loras),
        )

    @property
    def fetches(self) -> bool:
        """Whether preparing it fetches something (trained weights, an image URL)."""
        images = (self.image, self.mask, *(unit.image for unit in self.controls))
        images += self.ip_adapter_images
        urls = [getattr(img, "url", None) for img in images]
        return bool(self.replicate_weights) or any(urls) or any(r.is_url for r in self.loras)

    def with_seed(self) -> Request:
        """This request with a concrete seed: the given one, or a random 32-bit one."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=draw_seed())

    def seeds(self) -> list[int]:
        """One seed per image: `seed + i`, so image i can be made again alone."""
        if self.seed is None:
            raise ValueError("resolve the seed first (Request.with_seed)")
        return [self.seed + i for i in range(self.num_outputs)]

    def describe(self) -> dict[str, Any]:
        """The request's values for logs and metadata: no image data, no weights URL."""
        hidden = ("image", "mask", "replicate_weights", "trained_tar", "controls")
        hidden += ("ip_adapter_images",)
        described = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden
        }
        described["loras"] = [ref.shown() for ref in self.loras]  # no URL
        described["controls"] = [unit.shown() for unit in self.controls]  # no image
        described["ip_adapter_images"] = len(self.ip_adapter_images)
        return described


SERVER_FIELDS = frozenset({"trained_tar"})  # set by the server, never read from a request


def draw_seed() -> int:
    """The one random seed draw: a seed not given is a random 32-bit one."""
    return secrets.randbelow(MAX_SEED + 1)


def in_batches(request: Request, sizes: list[int]) -> list[Request]:
    """`request` as jobs of `sizes` images each, the seeds continuing from one job to the next
    (seed, seed + 1, ...: image i of the whole request has seed + i, as in one job), its seed
    drawn once when it has none."""
    seed = request.seed if request.seed is not None else draw_seed()
    jobs, first = [], 0
    for size in sizes:
        jobs.append(dataclasses.replace(request, seed=seed + first, num_outputs=size))
        first += size
    return jobs


@dataclass(frozen=True)
class AdapterSpec:
    """The trained weights one request asks for. Empty: nothing is loaded or touched."""

    # URL (or a local path the surface allowed) of a trainer tar or of a LoRA .safetensors
    replicate_weights: str | None = None
    trained_tar: str | None = None  # a tar or LoRA in this server's files (a trusted path)
    lora_name: str | None = None  # a LoRA we ship: "offset"
    lora_id: str | None = None  # <SDXL_LORA_DIR>/<id>.safetensors
    lora_scale: float = 0.6  # the trained version's and lora_name's / lora_id's weight
    loras: tuple[LoraRef, ...] = ()  # a stack, each at its own weight

    @property
    def empty(self) -> bool:
        named = self.lora_name or self.lora_id or self.loras
        return not (self.replicate_weights or self.trained_tar or named)
