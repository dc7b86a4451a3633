"""What the stages of a generation share (the first pass's base and refiner in
`sdxl.generate.denoise`, the hires fix's second pass in `sdxl.generate.hires`): the prompt
arguments of a stage and the step-end callback that reports its steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdxl.generate import prompts, weighted_prompts
from sdxl.inputs.request import Request

# on_step(stage, steps done, steps planned, the latents after that step); it may raise to stop
# the job at once. The latents are the pipeline's own: read them, never change them.
StepCallback = Callable[[str, int, int, Any], None]
PIXELS = "np"  # diffusers' output_type: decoded, on the host, not yet PIL images


def prompt_kwargs(pipe, req: Request, for_refiner: bool) -> dict[str, Any]:
    """Prompt arguments for one stage. An empty negative prompt means none, so SDXL's zeros
    apply; the refiner has only the second text encoder and reads `prompt_2` where given.
    Prompts past 77 tokens are encoded in chunks (sdxl.generate.prompts) instead of being cut.
    With prompt_syntax "a1111" they are read in A1111's language (weighted_prompts). clip_skip
    reads earlier layers of the text encoders, in diffusers' encoding as in ours."""
    negative = None if req.negative_prompt == "" else req.negative_prompt
    if for_refiner:
        prompt = req.prompt if req.prompt_2 is None else req.prompt_2
        if req.negative_prompt_2 is not None:
            negative = req.negative_prompt_2
        args = {"prompt": prompt, "negative_prompt": negative}
    else:
        args = {
            "prompt": req.prompt,
            "prompt_2": req.prompt_2,
            "negative_prompt": negative,
            "negative_prompt_2": req.negative_prompt_2,
        }
    texts = prompts.stage_texts(
        pipe, args["prompt"], args.get("prompt_2"), negative, args.get("negative_prompt_2")
    )
    zero_negative = pipe.config.force_zeros_for_empty_prompt
    clip_skip = req.clip_skip
    prompts.check_clip_skip(pipe, clip_skip)
    if req.prompt_syntax == "a1111":  # (word:1.3), [word], BREAK: A1111's encoding
        args = weighted_prompts.prompt_kwargs(pipe, texts, zero_negative, clip_skip)
    else:
        args = prompts.encode(pipe, texts, zero_negative, clip_skip) or args
    if clip_skip is not None and "prompt" in args:  # diffusers encodes: the same layers
        args["clip_skip"] = clip_skip
    return args


def step_callback(stage: str, total: int, on_step: StepCallback | None):
    """diffusers' step-end callback: reports the step; an exception from `on_step` propagates
    out of the pipeline, so a stopped job ends at once (no further step, no VAE decode)."""

    def callback(pipe, index, timestep, tensors):
        if on_step is not None:
            on_step(stage, index + 1, total, tensors["latents"])
        return tensors

    return callback
