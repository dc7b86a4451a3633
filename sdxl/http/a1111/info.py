"""AUTOMATIC1111's answer to txt2img and img2img: raw base64 PNGs, the request's effective
`parameters`, and `info`, a JSON string with the seeds and each image's infotext as A1111
writes them ("prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, ..."). Each PNG
carries its infotext in its `parameters` text chunk, as A1111's PNGs do, for the tools that
read it back (PNG Info, image browsers). The prompt keeps its `<lora:name:w>` tags as written
(A1111's does); `Lora hashes: "name: hash, ..."` gives each tagged LoRA's short hash as A1111
writes it (`LoraLibrary.short_hash`, computed once per file).

Not written: `Model hash` (A1111 hashes one checkpoint file; the served model is a diffusers
folder of several files, whose hash would be neither A1111's nor cheap)."""

from __future__ import annotations

import json
import logging
import struct
import time
from dataclasses import dataclass, field

from sdxl.adapters.library import LoraLibrary
from sdxl.inputs.request import Request

log = logging.getLogger(__name__)

VERSION = "sdxl-cog"  # what `info.version` and the infotext's Version name


@dataclass(frozen=True)
class Made:
    """What one request made: its images' seeds and how they were made."""

    request: Request  # the first job's, seed resolved
    seeds: list[int]
    sampler: str  # A1111's sampler name
    schedule: str  # A1111's schedule label
    width: int
    height: int
    denoising_strength: float | None
    model: str
    timestamp: str  # when the request started, as A1111 writes it
    lora_hashes: str | None = None  # "name: hash, name2: hash2", A1111's `Lora hashes`
    # The hires fix's keys as A1111 writes them ("Hires upscale": 2, ...), in its order; the
    # Size is the first pass's (A1111's: its infotext makes the image again)
    hires: dict = field(default_factory=dict)


def quote(value) -> str:
    """A1111's infotext quoting: JSON only where the value holds ',', '\\n' or ':'."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",\n:") else text


def infotext(made: Made, seed: int) -> str:
    req = made.request
    params = {
        "Steps": req.num_inference_steps,
        "Sampler": made.sampler,
        "Schedule type": made.schedule,
        "CFG scale": req.guidance_scale,
        "Seed": seed,
        "Size": f"{made.width}x{made.height}",
        "Model": made.model,
        "Denoising strength": made.denoising_strength,
        "Clip skip": None if req.clip_skip is None else req.clip_skip + 1,  # A1111's setting
        **made.hires,
        "Lora hashes": made.lora_hashes,
        "Version": VERSION,
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {req.negative_prompt}" if req.negative_prompt else ""
    return f"{req.prompt}{negative}\n{line}".strip()


def lora_hashes(request: Request, library: LoraLibrary | None, tenant: str) -> str | None:
    """A1111's `Lora hashes` value: each named LoRA of the stack (its name as written, without
    ':' and ',') with its short hash; None without any."""
    if library is None:
        return None
    found = {}
    for ref in request.loras:
        path = None if ref.is_url else library.find(ref.ref, tenant)
        if path is None:
            continue
        try:
            found[ref.ref.translate(_NOT_IN_NAMES)] = library.short_hash(path)
        except (OSError, ValueError, struct.error) as err:  # gone or changed since the job
            log.warning("no Lora hash for %r: %s", ref.ref, err)
    return ", ".join(f"{name}: {short}" for name, short in found.items()) or None


_NOT_IN_NAMES = str.maketrans("", "", ":,")


def info_json(made: Made, nsfw: list[bool]) -> str:
    req, count = made.request, len(made.seeds)
    first = made.seeds[0] if made.seeds else req.seed
    return json.dumps(
        {
            "prompt": req.prompt,
            "all_prompts": [req.prompt] * count,
            "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * count,
            "seed": first,
            "all_seeds": made.seeds,
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "subseed_strength": 0,
            "width": made.width,
            "height": made.height,
            "sampler_name": made.sampler,
            "cfg_scale": req.guidance_scale,
            "steps": req.num_inference_steps,
            "batch_size": req.num_outputs,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": made.model,
            "sd_model_hash": None,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": made.denoising_strength,
            "extra_generation_params": _extra_params(made),
            "index_of_first_image": 0,
            "infotexts": [infotext(made, seed) for seed in made.seeds],
            "styles": [req.style_selected] if req.style_selected else [],
            "job_timestamp": made.timestamp,
            "clip_skip": (req.clip_skip or 0) + 1,  # A1111's CLIP_stop_at_last_layers
            "is_using_inpainting_conditioning": False,
            "version": VERSION,
            "nsfw_content_detected": nsfw,  # this server's: flagged images come back black
        }
    )


def _extra_params(made: Made) -> dict:
    extra = {"Schedule type": made.schedule, **made.hires}
    if made.lora_hashes:
        extra["Lora hashes"] = made.lora_hashes
    return extra


def job_timestamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")
