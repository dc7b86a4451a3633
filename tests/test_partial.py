"""A job stopped early (AUTOMATIC1111's interrupt) ends with its latents decoded as diffusers
decodes them: `decode_latents` against diffusers' own interrupt (`pipe._interrupt`, which skips
the remaining steps and decodes the latents it has), on the tiny weights."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from sdxl.generate.partial import decode_latents


def test_decoded_latents_equal_diffusers_interrupted_output(reference):
    base, _ = reference
    kept = {}

    def stop_after_two(pipe, index, timestep, tensors):
        if index + 1 == 2:
            kept["latents"] = tensors["latents"].clone()
            pipe._interrupt = True  # diffusers' interrupt: no further step, then the decode
        return tensors

    expected = base(
        prompt="a cat",
        num_inference_steps=5,
        width=128,
        height=128,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
        callback_on_step_end=stop_after_two,
    ).images
    models = SimpleNamespace(base=base, vae_tile_above=10**9)
    got = decode_latents(models, SimpleNamespace(width=128, height=128), kept["latents"])
    assert got.shape == expected.shape == (1, 128, 128, 3)
    assert np.abs(got - expected).max() < 1e-5
    assert got.std() > 0.01  # an image, not a constant
