"""The REST API's own tables: scheduler names, output formats, Cog -> REST names.

Each table is declared here once; the schema, the parameter mapping and the tests read it.
Aspect ratios and style presets are the engine's (`sdxl.config.ASPECT_RATIOS`, `STYLES`).
"""

from __future__ import annotations

# DataCrunch scheduler name -> the engine's (Replicate's) name in sdxl.schedulers.SCHEDULER_TABLE.
SCHEDULER_ALIASES: dict[str, str] = {
    "DDIM": "DDIM",
    "K_EULER": "K_EULER",
    "EulerA": "K_EULER_ANCESTRAL",
    "DPMSolverMultistep": "DPMSolverMultistep",
    "KarrasDPM": "KarrasDPM",
    "PNDM": "PNDM",
    "HeunDiscrete": "HeunDiscrete",
}

# output_format -> PIL format name. Lossy formats are saved at OUTPUT_QUALITY.
OUTPUT_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
OUTPUT_QUALITY = 90

# The engine's (Cog) input names that the REST API spells differently, for error messages.
COG_TO_REST_NAMES: dict[str, str] = {
    "prompt_strength": "strength",
    "num_outputs": "num_images_per_prompt",
    "refine_steps": "num_inference_steps_refiner",
    "image": "seed_image",
}
