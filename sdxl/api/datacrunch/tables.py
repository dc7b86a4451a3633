"""The DataCrunch API's own tables: scheduler names, output formats, Cog -> REST names.

Each table is declared here once; the schema, the parameter mapping and the tests read it.
Aspect ratios and style presets are the engine's (`sdxl.config.ASPECT_RATIOS`, `STYLES`).
"""

from __future__ import annotations

from sdxl.errors import Naming

# DataCrunch scheduler name -> the engine's (Replicate's) name in SCHEDULER_TABLE.
SCHEDULER_ALIASES: dict[str, str] = {
    "DDIM": "DDIM",
    "K_EULER": "K_EULER",
    "EulerA": "K_EULER_ANCESTRAL",
    "DPMSolverMultistep": "DPMSolverMultistep",
    "KarrasDPM": "KarrasDPM",
    "PNDM": "PNDM",
    "HeunDiscrete": "HeunDiscrete",
}

# output_format values (names of sdxl.core.encode.FORMATS). Lossy ones at OUTPUT_QUALITY.
OUTPUT_FORMATS = ("png", "jpeg", "webp")
OUTPUT_QUALITY = 90

# The engine's (Cog) input names that this API spells differently, for error messages.
COG_TO_REST_NAMES: dict[str, str] = {
    "prompt_strength": "strength",
    "num_outputs": "num_images_per_prompt",
    "refine_steps": "num_inference_steps_refiner",
    "image": "seed_image",
    "high_noise_frac": "refiner_ratio",  # the refiner's share: 1 - the base's
}
REST_NAMING = Naming(COG_TO_REST_NAMES, convert={"high_noise_frac": lambda frac: 1 - frac})
