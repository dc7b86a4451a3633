"""The tables every other module reads: input specs, limits, weights layout, choices.

Each option is declared once, here. `predict.py` repeats the Cog inputs as literals because
`cog build` reads it statically; `tests/test_predict_surface.py` keeps the two equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Weights layout under SDXL_WEIGHTS_DIR.
BASE_DIR = "base"
REFINER_DIR = "refiner"
LORAS_DIR = "loras"
SAFETY_DIR = "safety_checker"
TRAIN_DIR = "train"  # the trainer's helper models: blip/, clipseg/, swin2sr/
UPSCALERS_DIR = "upscalers"  # the hires fix's ESRGAN-family models: <name>.safetensors
CONTROLNET_DIR = "controlnet"  # ControlNets in diffusers' layout: controlnet/<name>/config.json
ANNOTATORS_DIR = "annotators"  # the control preprocessors' models: annotators/depth/
# IP-Adapters in h94/IP-Adapter's hub layout: ip_adapter/sdxl_models/<file>.safetensors and the
# ViT-H image encoder in ip_adapter/models/image_encoder/ (config.json, model.safetensors)
IP_ADAPTER_DIR = "ip_adapter"
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_ENCODER = "models/image_encoder"
# The IP-Adapters by the short name the `ip_adapter_model` input takes -> their file.
IP_ADAPTER_MODELS = {
    "vit-h": "ip-adapter_sdxl_vit-h.safetensors",
    "plus": "ip-adapter-plus_sdxl_vit-h.safetensors",
    "plus-face": "ip-adapter-plus-face_sdxl_vit-h.safetensors",
}
DEFAULT_WEIGHTS_DIR = "weights"
# LoRAs shipped with the weights, by the name the REST API's `lora_name` uses.
NAMED_LORAS = {"offset": f"{LORAS_DIR}/offset.safetensors"}  # SDXL's offset-noise LoRA

# The predictor's OpenAPI document, as `cog build` writes it (python -m sdxl schema).
COG_SCHEMA_FILE = Path(__file__).resolve().parent.parent / ".cog" / "openapi_schema.json"

# Sizes: multiples of 8 (the VAE's downscale), within these bounds.
SIZE_MULTIPLE = 8
MIN_SIDE = 256
MAX_SIDE = 2048
MAX_PIXELS = 2048 * 2048  # about 4 megapixels
MAX_PROMPT_CHARS = 10_000  # far beyond what any encoder reads; bounds request size
MAX_SEED = 2**32 - 1
MAX_IMAGES = 10  # images one request may ask for (a job makes at most num_outputs' 4)
MAX_URL_CHARS = 4096  # replicate_weights and image URLs
MAX_NAME_CHARS = 128  # lora_id, lora_name
MAX_LORAS_CHARS = 16_384  # the `loras` input: a few names and URLs
MAX_BLOCK_SCALES_CHARS = 4096  # ip_adapter_block_scales: a small JSON object

# base_image_refiner: the refiner re-noises the base's result to this strength.
BASE_IMAGE_REFINER_STRENGTH = 0.3

SCHEDULERS = (
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
    "LCM",  # few-step: for LCM-LoRA and distilled LoRAs (at most 50 steps)
    "TCD",  # few-step: for TCD and Hyper-SD LoRAs (at most 50 steps)
)
REFINE_MODES = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
OUTPUT_FORMATS = ("png", "webp", "jpg")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# How prompts are read: as plain text, or in AUTOMATIC1111's language ((word:1.3), [word], BREAK,
# <lora:name:weight>); sdxl.inputs.prompt_syntax.
PROMPT_SYNTAXES = ("plain", "a1111")
# The hires fix's upscalers, by AUTOMATIC1111's names (sdxl.upscale): torch's interpolation of
# the first pass's latents, Pillow's resampling of its pixels ("None": A1111's plain Lanczos
# resize), and the ESRGAN-family models `weights download` fetches into upscalers/ (others
# dropped there are offered by the A1111 API too).
LATENT_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")
MODEL_UPSCALERS = ("4x-UltraSharp", "RealESRGAN_x4plus")
HIRES_UPSCALERS = LATENT_UPSCALERS + PIXEL_UPSCALERS + MODEL_UPSCALERS
MAX_HIRES_SCALE = 4  # the second pass's size over the first's, per side

# ControlNet (sdxl.control). A control type is a dedicated ControlNet's (canny, depth: the
# folders controlnet/<type>/, else controlnet/<type>-small/) or one of the union model's
# (controlnet/union/, xinsir's SDXL union "promax" as diffusers' ControlNetUnionModel), by its
# control_mode index. "none": the unit is off.
UNION_MODES = {
    "openpose": 0,
    "depth": 1,
    "softedge": 2,  # hed, pidi, scribble
    "canny": 3,  # canny, lineart, mlsd
    "normal": 4,
    "segment": 5,
    "tile": 6,
}
DEDICATED_CONTROLS = ("canny", "depth")
CONTROL_TYPES = ("none", *DEDICATED_CONTROLS, *(f"union_{name}" for name in UNION_MODES))
CONTROL_ALIASES = {"edge_canny": "canny", "depth_midas": "depth"}  # fofr's predictor's names
UNION_MODEL = "union"  # the union model's folder under controlnet/
# What makes a control map of an image: OpenCV's Canny, the depth model in annotators/depth/,
# or nothing (the image is a control map already). The types that have one use it by default.
CONTROL_PREPROCESSORS = ("canny", "depth", "none")
TYPE_PREPROCESSORS = {
    "canny": "canny",
    "depth": "depth",
    "union_canny": "canny",
    "union_depth": "depth",
}
# How a control image meets the output's size (AUTOMATIC1111's resize modes): stretched to it,
# cropped to its aspect then resized (A1111's default), or resized to fit and padded.
CONTROL_RESIZE_MODES = ("resize", "crop", "fill")
MAX_CONTROL_UNITS = 3  # ControlNets one request may use at once

# Style presets live in one data file (prompt template + negative prompt), ours.
ANONYMOUS = "anonymous"  # the tenant when the API server runs without keys (--no-auth)
STYLES_FILE = Path(__file__).with_name("styles.json")
STYLES: dict[str, dict[str, str]] = json.loads(STYLES_FILE.read_text())

# SDXL's trained resolutions: aspect ratio -> (width, height).
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}


@dataclass(frozen=True)
class InputSpec:
    """One input of the engine: its kind, default, bounds, choices, and the operator's cap on it.

    kind is "string", "integer", "number", "boolean" or "image" (a file: a URL, a data URI).
    """

    kind: str
    default: Any = None
    ge: float | None = None
    le: float | None = None
    choices: tuple | None = None
    max_length: int | None = None  # strings whose bound is not a cap
    cap: str | None = None  # the field of sdxl.settings.Caps that bounds it below the schema


def _control_unit(n: int) -> dict[str, InputSpec]:
    """ControlNet unit n's inputs (controlnet_n...), in predict.py's order."""
    return {
        f"controlnet_{n}": InputSpec("string", "none", choices=(*CONTROL_TYPES, *CONTROL_ALIASES)),
        f"controlnet_{n}_image": InputSpec("image", None),
        f"controlnet_{n}_preprocessor": InputSpec("string", None, choices=CONTROL_PREPROCESSORS),
        f"controlnet_{n}_conditioning_scale": InputSpec("number", 0.75, 0, 4),
        f"controlnet_{n}_start": InputSpec("number", 0.0, 0, 1),
        f"controlnet_{n}_end": InputSpec("number", 1.0, 0, 1),
    }


# The Cog predictor's inputs, in the order of predict.py. Names, defaults and choices follow
# Replicate's stability-ai/sdxl; bounds are at least as wide as its bounds.
COG_INPUTS: dict[str, InputSpec] = {
    "prompt": InputSpec("string", "An astronaut riding a rainbow unicorn", cap="max_prompt_chars"),
    "negative_prompt": InputSpec("string", "", cap="max_prompt_chars"),
    "prompt_2": InputSpec("string", None, cap="max_prompt_chars"),
    "negative_prompt_2": InputSpec("string", None, cap="max_prompt_chars"),
    "style_selected": InputSpec("string", None, choices=tuple(STYLES)),
    "image": InputSpec("image", None),
    "mask": InputSpec("image", None),
    "width": InputSpec("integer", 1024, MIN_SIDE, MAX_SIDE, cap="max_pixels"),
    "height": InputSpec("integer", 1024, MIN_SIDE, MAX_SIDE, cap="max_pixels"),
    "aspect_ratio": InputSpec("string", None, choices=tuple(ASPECT_RATIOS)),
    "num_outputs": InputSpec("integer", 1, 1, 4, cap="max_outputs"),
    "scheduler": InputSpec("string", "K_EULER", choices=SCHEDULERS),
    "num_inference_steps": InputSpec("integer", 50, 1, 500, cap="max_steps"),
    "guidance_scale": InputSpec("number", 7.5, 0, 50),
    "guidance_scale_refiner": InputSpec("number", None, 0, 50),
    "prompt_strength": InputSpec("number", 0.8, 0, 1),
    "seed": InputSpec("integer", None, 0, MAX_SEED),
    "refine": InputSpec("string", "no_refiner", choices=REFINE_MODES),
    "high_noise_frac": InputSpec("number", 0.8, 0, 1),
    "refine_steps": InputSpec("integer", None, 1, 500, cap="max_steps"),
    "timestep_spacing": InputSpec("string", None, choices=TIMESTEP_SPACINGS),
    "apply_watermark": InputSpec("boolean", True),
    "lora_scale": InputSpec("number", 0.6, 0, 2),
    "replicate_weights": InputSpec("string", None, max_length=MAX_URL_CHARS),
    "disable_safety_checker": InputSpec("boolean", False),
    "output_format": InputSpec("string", "png", choices=OUTPUT_FORMATS),
    "output_quality": InputSpec("integer", 80, 1, 100),
    # DeepCache: the UNet's deep features are computed every this many steps, reused between
    # (1: off). About 2.3-2.6x fewer UNet FLOPs at 3, with a small cost in quality.
    "cache_interval": InputSpec("integer", 1, 1, 10),
    "prompt_syntax": InputSpec("string", "plain", choices=PROMPT_SYNTAXES),
    # A LoRA stack: "name[:weight], https://host/x.safetensors[:weight]" (sdxl.inputs.lora_refs)
    "loras": InputSpec("string", None, max_length=MAX_LORAS_CHARS),
    # Hires fix: a second, img2img pass at hires_scale x the size (None: no second pass), on
    # the first pass's result upscaled by hires_upscaler, with hires_steps (0: the first
    # pass's num_inference_steps) at hires_strength.
    "hires_scale": InputSpec("number", None, 1, MAX_HIRES_SCALE, cap="max_pixels"),
    "hires_upscaler": InputSpec("string", "Latent", choices=HIRES_UPSCALERS),
    "hires_steps": InputSpec("integer", 0, 0, 500, cap="max_steps"),
    "hires_strength": InputSpec("number", 0.7, 0, 1),
    # ControlNet: up to three units (sdxl.inputs.control_units). controlnet_N is the control
    # type; its image is turned into a control map by the preprocessor (blank: the type's own;
    # none: the image is a map already); the ControlNet's residuals are scaled by the
    # conditioning scale and applied from start to end (fractions of the steps).
    **{name: spec for n in (1, 2, 3) for name, spec in _control_unit(n).items()},
    # Canny's hysteresis thresholds (OpenCV's Canny), for every unit that detects edges.
    "canny_low_threshold": InputSpec("integer", 100, 1, 255),
    "canny_high_threshold": InputSpec("integer", 200, 1, 255),
    # The control maps are returned too, before the images (as fofr's predictor returns them).
    "return_control_maps": InputSpec("boolean", False),
    # IP-Adapter (sdxl.control.ip_adapter): the output follows this reference image's style,
    # subject or face, by the adapter named (IP_ADAPTER_MODELS) at this scale; the block
    # scales, when given, set each block's own (diffusers' set_ip_adapter_scale, as JSON).
    "ip_adapter_image": InputSpec("image", None),
    "ip_adapter_model": InputSpec("string", "plus", choices=tuple(IP_ADAPTER_MODELS)),
    "ip_adapter_scale": InputSpec("number", 0.6, 0, 1),
    "ip_adapter_block_scales": InputSpec("string", None, max_length=MAX_BLOCK_SCALES_CHARS),
}
# Inputs of the other APIs that the predictor does not have.
EXTRA_INPUTS: dict[str, InputSpec] = {
    "lora_name": InputSpec("string", None, max_length=MAX_NAME_CHARS),  # a LoRA we ship
    "lora_id": InputSpec("string", None, max_length=MAX_NAME_CHARS),  # <SDXL_LORA_DIR>/<id>
    # AUTOMATIC1111's API only (CLIP_stop_at_last_layers - 1): how many more of the text
    # encoders' last layers to skip past SDXL's usual penultimate one (None: that one).
    # diffusers' clip_skip; at most the text encoders' layers - 1 (11 in SDXL's CLIP-L).
    "clip_skip": InputSpec("integer", None, 0, 11),
    # AUTOMATIC1111's API only: the hires fix's size as hr_resize_x / hr_resize_y (one given:
    # the other keeps the aspect; both: pixel upscalers crop to it, latent ones stretch), its
    # own sampler (the engine's scheduler name and spacing), prompt and negative prompt (None:
    # the first pass's).
    "hires_width": InputSpec("integer", None, MIN_SIDE, MAX_SIDE, cap="max_pixels"),
    "hires_height": InputSpec("integer", None, MIN_SIDE, MAX_SIDE, cap="max_pixels"),
    "hires_scheduler": InputSpec("string", None, choices=SCHEDULERS),
    "hires_timestep_spacing": InputSpec("string", None, choices=TIMESTEP_SPACINGS),
    "hires_prompt": InputSpec("string", None, cap="max_prompt_chars"),
    "hires_negative_prompt": InputSpec("string", None, cap="max_prompt_chars"),
}
INPUTS = {**COG_INPUTS, **EXTRA_INPUTS}
# Read by the step that encodes the images, not by the engine.
OUTPUT_INPUTS = ("output_format", "output_quality")
