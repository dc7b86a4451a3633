"""Long prompts are encoded in chunks, never cut; short ones are diffusers' own encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.helpers import pixels

from sdxl.errors import InputError
from sdxl.generate import prompts
from sdxl.generate.schedulers import make_scheduler
from sdxl.inputs.request import Request

LONG = "a photo of a cat with a hat, " * 20  # about 200 tokens


@pytest.fixture(scope="module")
def base_pipe(models):
    return models.pipeline("txt2img", make_scheduler("K_EULER", models.scheduler_config("base")))


def test_short_prompts_are_left_to_diffusers(base_pipe):
    texts = prompts.stage_texts(base_pipe, "a photo of a cat", None, None, None)
    assert prompts.encode(base_pipe, texts, zero_negative=True) is None


def test_first_chunk_equals_diffusers_truncated_encoding(base_pipe):
    n_tokens = prompts.token_counts(base_pipe.tokenizer, (LONG,))[0]
    assert n_tokens > 2 * 75
    texts = prompts.stage_texts(base_pipe, LONG, None, "blurry", None)
    ours = prompts.encode(base_pipe, texts, zero_negative=True)
    ref, ref_neg, ref_pooled, ref_neg_pooled = base_pipe.encode_prompt(
        LONG,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    assert ours["prompt_embeds"].shape[1] == 77 * 3
    torch.testing.assert_close(ours["prompt_embeds"][:, :77], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], ref_pooled, rtol=0, atol=1e-5)
    # the short negative is padded with empty chunks to the same length
    torch.testing.assert_close(ours["negative_prompt_embeds"][:, :77], ref_neg, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        ours["negative_pooled_prompt_embeds"], ref_neg_pooled, rtol=0, atol=1e-5
    )


def test_empty_negative_is_zeros_for_long_prompts(base_pipe):
    texts = prompts.stage_texts(base_pipe, LONG, None, None, None)
    ours = prompts.encode(base_pipe, texts, zero_negative=True)
    assert not ours["negative_prompt_embeds"].any()
    assert ours["negative_prompt_embeds"].shape == ours["prompt_embeds"].shape


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner"])
def test_words_past_77_tokens_change_the_image(engine, refine):
    def run(prompt):
        req = Request(prompt=prompt, width=256, height=256, num_inference_steps=4, seed=3)
        return pixels(engine.run(Request(**{**req.__dict__, "refine": refine})).images[0])

    a = run(LONG + "in the snow")
    b = run(LONG + "on the beach at night")
    assert np.abs(a - b).max() > 0, "the tail of a long prompt was ignored"


def test_prompt_too_long_is_an_error(engine):
    with pytest.raises(InputError, match=r"a prompt has \d+ tokens; the limit is 450"):
        engine.run(Request(prompt=LONG * 4, width=256, height=256, num_inference_steps=2))
