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


def _framed_states(tokenizer, encoder, text: str, layer: int) -> torch.Tensor:
    """One encoder's hidden states at `layer` for the first 75 tokens of `text`, framed."""
    ids = tokenizer(text, add_special_tokens=False).input_ids[:75]
    framed = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    framed += [tokenizer.pad_token_id] * (77 - len(framed))
    return encoder(torch.tensor([framed]), output_hidden_states=True).hidden_states[layer]


@torch.no_grad()
def test_clip_skip_reads_an_earlier_layer_of_prompt_and_negative(base_pipe):
    """clip_skip 1: the layer before the penultimate (hidden_states[-3]) in both encoders, for
    the long prompt and for the negative (which diffusers' own clip_skip leaves at -2)."""
    texts = prompts.stage_texts(base_pipe, LONG, None, "blurry", None)
    ours = prompts.encode(base_pipe, texts, zero_negative=True, clip_skip=1)
    usual = prompts.encode(base_pipe, texts, zero_negative=True)
    pairs = prompts.encoders(base_pipe)
    for text, key in ((LONG, "prompt_embeds"), ("blurry", "negative_prompt_embeds")):
        expected = torch.cat([_framed_states(t, e, text, -3) for t, e in pairs], dim=-1)
        torch.testing.assert_close(ours[key][:, :77], expected, rtol=0, atol=1e-5)
        assert not torch.allclose(ours[key], usual[key])
    torch.testing.assert_close(ours["pooled_prompt_embeds"], usual["pooled_prompt_embeds"])
    # short: left to diffusers (with clip_skip=) only where it has no negative text to encode
    short = prompts.stage_texts(base_pipe, "a cat", None, None, None)
    assert prompts.encode(base_pipe, short, zero_negative=True, clip_skip=1) is None
    short = prompts.stage_texts(base_pipe, "a cat", None, "blurry", None)
    assert "negative_prompt_embeds" in prompts.encode(base_pipe, short, True, clip_skip=1)


def test_clip_skip_beyond_the_text_encoders_layers_is_an_error(base_pipe):
    layers = base_pipe.text_encoder.config.num_hidden_layers  # 3 in the tiny model
    prompts.check_clip_skip(base_pipe, layers - 1)  # down to the token embeddings
    with pytest.raises(InputError, match=rf"clip_skip={layers}.*the most is {layers - 1}"):
        prompts.check_clip_skip(base_pipe, layers)
