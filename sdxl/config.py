"""The tables every other module reads: input specs, limits, layout, runtime settings.

Each option is declared once, here. `predict.py` repeats the Cog inputs as literals because
`cog build` reads it statically; `tests/test_predict_surface.py` keeps the two equal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# Weights layout under SDXL_WEIGHTS_DIR.
BASE_DIR = "base"
REFINER_DIR = "refiner"
LORAS_DIR = "loras"
SAFETY_DIR = "safety_checker"
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
)
REFINE_MODES = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
OUTPUT_FORMATS = ("png", "webp", "jpg")
DTYPES = ("auto", "float32", "float16", "bfloat16")

# Style presets live in one data file (prompt template + negative prompt), ours.
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


def cog_input_kinds(schema: dict | None = None) -> dict[str, str]:
    """Input name -> "integer" | "number" | "boolean" | "string" | "uri", from the predictor's
    OpenAPI document (the one coglet validates against)."""
    schema = json.loads(COG_SCHEMA_FILE.read_text()) if schema is None else schema
    kinds = {}
    for name, prop in schema["components"]["schemas"]["Input"]["properties"].items():
        kinds[name] = "uri" if prop.get("format") == "uri" else prop.get("type", "string")
    return kinds


@dataclass(frozen=True)
class InputSpec:
    """One input of the Cog predictor: its default, bounds and choices."""

    default: Any = None
    ge: float | None = None
    le: float | None = None
    choices: tuple | None = None


# The Cog predictor's inputs, in the order of predict.py. Names, defaults and choices follow
# Replicate's stability-ai/sdxl; bounds are at least as wide as its bounds.
COG_INPUTS: dict[str, InputSpec] = {
    "prompt": InputSpec("An astronaut riding a rainbow unicorn"),
    "negative_prompt": InputSpec(""),
    "prompt_2": InputSpec(None),
    "negative_prompt_2": InputSpec(None),
    "style_selected": InputSpec(None, choices=tuple(STYLES)),
    "image": InputSpec(None),
    "mask": InputSpec(None),
    "width": InputSpec(1024, MIN_SIDE, MAX_SIDE),
    "height": InputSpec(1024, MIN_SIDE, MAX_SIDE),
    "aspect_ratio": InputSpec(None, choices=tuple(ASPECT_RATIOS)),
    "num_outputs": InputSpec(1, 1, 4),
    "scheduler": InputSpec("K_EULER", choices=SCHEDULERS),
    "num_inference_steps": InputSpec(50, 1, 500),
    "guidance_scale": InputSpec(7.5, 0, 50),
    "guidance_scale_refiner": InputSpec(None, 0, 50),
    "prompt_strength": InputSpec(0.8, 0, 1),
    "seed": InputSpec(None, 0, MAX_SEED),
    "refine": InputSpec("no_refiner", choices=REFINE_MODES),
    "high_noise_frac": InputSpec(0.8, 0, 1),
    "refine_steps": InputSpec(None, 1, 500),
    "timestep_spacing": InputSpec(None, choices=TIMESTEP_SPACINGS),
    "apply_watermark": InputSpec(True),
    "lora_scale": InputSpec(0.6, 0, 2),
    "replicate_weights": InputSpec(None),
    "disable_safety_checker": InputSpec(False),
    "output_format": InputSpec("png", choices=OUTPUT_FORMATS),
    "output_quality": InputSpec(80, 1, 100),
}


@dataclass(frozen=True)
class Caps:
    """Limits an operator sets below the schema's bounds, for every API of the process."""

    max_steps: int = 500  # SDXL_MAX_STEPS: num_inference_steps and refine_steps
    max_pixels: int = MAX_PIXELS  # SDXL_MAX_PIXELS: width x height (images are scaled to it)
    max_outputs: int = 4  # SDXL_MAX_OUTPUTS: images per request
    max_prompt_chars: int = MAX_PROMPT_CHARS  # SDXL_MAX_PROMPT_CHARS: each prompt field

    VARIABLES: ClassVar[dict[str, str]] = {
        "max_steps": "SDXL_MAX_STEPS",
        "max_pixels": "SDXL_MAX_PIXELS",
        "max_outputs": "SDXL_MAX_OUTPUTS",
        "max_prompt_chars": "SDXL_MAX_PROMPT_CHARS",
    }

    @classmethod
    def from_env(cls, env=None) -> Caps:
        env = os.environ if env is None else env
        values = {}
        for field_name, variable in cls.VARIABLES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            most = getattr(cls, field_name)
            if not raw.isdigit() or not 1 <= int(raw) <= most:
                raise ValueError(f"{variable}={raw!r} is not valid; use a whole number 1..{most}")
            values[field_name] = int(raw)
        return cls(**values)


def env_number(env, name: str, parse, minimum, default, hint: str = ""):
    """The number in `env[name]` (`default` when unset), at least `minimum`; a ValueError that
    names the variable and what to write instead."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "a whole number" if parse is int else "a number"
        shown = "unset" if default is None else default
        hint = f"; {hint}" if hint else ""
        raise ValueError(
            f"{name}={raw!r} is not valid; use {kind} of at least {minimum} (default {shown}{hint})"
        )
    return value


SWITCHES = ("auto", "1", "0")  # auto: on where it helps (the CUDA fast path), 1: on, 0: off


@dataclass(frozen=True)
class Runtime:
    """Process-wide settings, read from the environment once at setup()."""

    weights_dir: Path  # SDXL_WEIGHTS_DIR
    dtype: str  # SDXL_DTYPE, one of DTYPES; auto: float16 on CUDA, bfloat16 on a CPU that has
    # it natively (AVX512-BF16 or AMX), float32 on other CPUs
    channels_last: str = "auto"  # SDXL_CHANNELS_LAST: UNets and VAE in channels-last layout
    fuse_qkv: str = "auto"  # SDXL_FUSE_QKV: one projection for Q, K, V (unfused under a LoRA)
    warmup: str = "auto"  # SDXL_WARMUP: one small generation in setup (kernels, cuDNN plans)
    compile: bool = False  # SDXL_COMPILE=1: torch.compile the UNets and the VAE decoder
    compile_shapes: tuple[tuple[int, int], ...] = ((1024, 1024),)  # SDXL_COMPILE_SHAPES
    vae_tile_above: int = 2560 * 1024  # SDXL_VAE_TILE_ABOVE: pixels beyond which decode tiles

    @classmethod
    def from_env(cls, env=None) -> Runtime:
        env = os.environ if env is None else env
        dtype = env.get("SDXL_DTYPE", "auto")
        if dtype not in DTYPES:
            raise ValueError(
                f"SDXL_DTYPE={dtype!r} is not supported; use one of {', '.join(DTYPES)}"
            )
        switches = {}
        for name in ("channels_last", "fuse_qkv", "warmup"):
            variable = f"SDXL_{name.upper()}"
            switches[name] = env.get(variable, "auto").strip() or "auto"
            if switches[name] not in SWITCHES:
                raise ValueError(f"{variable}={switches[name]!r}: use auto, 1 or 0")
        compile_ = env.get("SDXL_COMPILE", "0").strip()
        if compile_ not in ("0", "1", ""):
            raise ValueError(f"SDXL_COMPILE={compile_!r}: use 1 (compile) or 0")
        tile = env.get("SDXL_VAE_TILE_ABOVE", "").strip()
        if tile and not (tile.isdigit() and int(tile) > 0):
            raise ValueError(f"SDXL_VAE_TILE_ABOVE={tile!r}: use a number of pixels")
        return cls(
            weights_dir=Path(env.get("SDXL_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR)),
            dtype=dtype,
            compile=compile_ == "1",
            compile_shapes=parse_shapes(env.get("SDXL_COMPILE_SHAPES", "1024x1024")),
            vae_tile_above=int(tile) if tile else cls.vae_tile_above,
            **switches,
        )

    def switch(self, name: str, cuda: bool) -> bool:
        value = getattr(self, name)
        return cuda if value == "auto" else value == "1"


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """ "1024x1024,1152x896" -> ((1024, 1024), (1152, 896)), each a valid size."""
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        width, x, height = part.lower().partition("x")
        if not (x and width.isdigit() and height.isdigit()):
            raise ValueError(f"SDXL_COMPILE_SHAPES has {part!r}; write sizes as 1024x1024")
        w, h = int(width), int(height)
        if (
            w % SIZE_MULTIPLE
            or h % SIZE_MULTIPLE
            or not MIN_SIDE <= min(w, h) <= max(w, h) <= MAX_SIDE
        ):
            raise ValueError(
                f"SDXL_COMPILE_SHAPES has {part!r}; sides are multiples of {SIZE_MULTIPLE} "
                f"from {MIN_SIDE} to {MAX_SIDE}"
            )
        shapes.append((w, h))
    return tuple(shapes)
