"""AUTOMATIC1111's prompt language: the parser against A1111's documented examples, its chunks,
and the weighted embeddings against our own reading of its rules, computed here with the text
encoders directly."""

from __future__ import annotations

import pytest
import torch

from sdxl.errors import InputError
from sdxl.generate import prompts, weighted_prompts
from sdxl.generate.schedulers import make_scheduler
from sdxl.inputs.prompt_syntax import BREAK, Piece, lora_tags, parse


def pieces(*pairs):
    return [BREAK if p is BREAK else Piece(*p) for p in pairs]


# The examples of A1111's prompt-attention documentation, with the results it gives.
DOCUMENTED = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * 1.1 * 1.1),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.1 * 1.1 * 1.1 * 1.1),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("prompt", "expected"), DOCUMENTED)
def test_documented_examples(prompt, expected):
    parsed = parse(prompt)
    assert [p.text for p in parsed] == [text for text, _ in expected]
    assert [p.weight for p in parsed] == pytest.approx([w for _, w in expected], abs=1e-12)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("[[low]] (x:0.5)", [("low", 1 / 1.1 / 1.1), (" ", 1.0), ("x", 0.5)]),
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("BREAK", [BREAK]),
        ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
        ("a break b", [("a break b", 1.0)]),  # lower case is a word
        ("BREAKFAST", [("BREAKFAST", 1.0)]),
        ("stray ) and ] and :", [("stray ) and ] and :", 1.0)]),
        ("(worst quality:1.4)", [("worst quality", 1.4)]),
        ("", [("", 1.0)]),
    ],
)
def test_edges(prompt, expected):
    assert parse(prompt) == pieces(*expected)


def test_lora_tags_are_taken_out_with_their_weights():
    text, tags = lora_tags("a cat <lora:offset:0.7>, <lora:my style> in snow")
    assert text == "a cat ,  in snow"
    assert [(t.name, t.weight) for t in tags] == [("offset", 0.7), ("my style", 1.0)]


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora:x:3>", "<lora:x:-2.5>"])
def test_lora_tag_weight_out_of_range_names_the_tag(tag):
    with pytest.raises(InputError, match=r"<lora:x:") as err:
        lora_tags(f"a {tag} b", "negative_prompt")
    assert err.value.field == "negative_prompt"


@pytest.fixture(scope="module")
def base_pipe(models):
    return models.pipeline("txt2img", make_scheduler("K_EULER", models.scheduler_config("base")))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_break_ends_the_chunk(base_pipe):
    tok = base_pipe.tokenizer
    chunks = weighted_prompts.chunks_of(tok, parse("a cat BREAK (a hat)"))
    assert [c.ids for c in chunks] == [_ids(tok, "a cat"), _ids(tok, "a hat")]
    assert chunks[1].weights == [1.1] * len(_ids(tok, "a hat"))


def test_a_full_chunk_ends_after_a_recent_comma(base_pipe):
    tok = base_pipe.tokenizer
    head = _ids(tok, "cat " * 70)  # one token a word in the tiny vocabulary
    assert len(head) == 70
    chunks = weighted_prompts.chunks_of(tok, parse("cat " * 70 + ", dog dog dog dog dog dog"))
    comma_at = len(head)  # the comma is the 71st token; the chunk would fill at 75
    assert chunks[0].ids == head + _ids(tok, ",")
    assert len(chunks[0].ids) == comma_at + 1
    assert chunks[1].ids == _ids(tok, "dog dog dog dog dog dog")


def test_without_a_comma_chunks_are_75_tokens(base_pipe):
    tok = base_pipe.tokenizer
    chunks = weighted_prompts.chunks_of(tok, parse("cat " * 160))
    assert [len(c.ids) for c in chunks] == [75, 75, 10]


def _reference_chunk(tokenizer, encoder, ids, weights, layer=-2):
    """One chunk as we read A1111's rules: framed, penultimate states (or `layer`'s), weighted,
    mean restored."""
    framed = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    framed += [tokenizer.pad_token_id] * (77 - len(framed))
    w = torch.tensor([1.0, *weights] + [1.0] * (76 - len(weights)))
    out = encoder(torch.tensor([framed]), output_hidden_states=True)
    z = out.hidden_states[layer][0]
    scaled = z * w[:, None]
    return scaled * (z.mean() / scaled.mean()), out[0][0] if out[0].ndim == 2 else None


def weighted(*parts):
    """A chunk's (ids, weights) for one tokenizer, from (text, weight) parts."""

    def build(tokenizer):
        ids = [i for text, _ in parts for i in _ids(tokenizer, text)]
        return ids, [w for text, w in parts for _ in _ids(tokenizer, text)]

    return build


def expected_embeds(pipe, chunks, layer=-2):
    """(hidden states, pooled) of chunks encoded one at a time by each encoder."""
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    per_encoder, pooled = [], None
    for tokenizer, encoder in encoders:
        encoded = [
            _reference_chunk(tokenizer, encoder, *chunk(tokenizer), layer) for chunk in chunks
        ]
        per_encoder.append(torch.cat([hidden for hidden, _ in encoded]))
        pooled = encoded[0][1] if encoded[0][1] is not None else pooled
    return torch.cat(per_encoder, dim=-1)[None], pooled[None]


@torch.no_grad()
def test_weighted_embeddings_follow_the_rules(base_pipe):
    prompt, negative = "a (cat:1.3) with [a hat] BREAK (((in snow)))", "(blurry:1.4), ugly"
    texts = prompts.stage_texts(base_pipe, prompt, None, negative, None)
    ours = weighted_prompts.encode(base_pipe, texts, zero_negative=True)

    first = weighted(("a ", 1.0), ("cat", 1.3), (" with ", 1.0), ("a hat", 1 / 1.1))
    embeds, pooled = expected_embeds(base_pipe, [first, weighted(("in snow", 1.1**3))])
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=1e-5)

    # the negative is padded with an empty chunk to the prompt's two
    neg_chunks = [weighted(("blurry", 1.4), (", ugly", 1.0)), weighted()]
    neg, neg_pooled = expected_embeds(base_pipe, neg_chunks)
    torch.testing.assert_close(ours["negative_prompt_embeds"], neg, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["negative_pooled_prompt_embeds"], neg_pooled, rtol=0, atol=1e-5)


def test_weights_change_the_embeddings_but_keep_the_mean(base_pipe):
    plain = prompts.stage_texts(base_pipe, "a cat BREAK a hat", None, None, None)
    heavy = prompts.stage_texts(base_pipe, "a (cat:1.5) BREAK a hat", None, None, None)
    a = weighted_prompts.encode(base_pipe, plain, zero_negative=True)["prompt_embeds"]
    b = weighted_prompts.encode(base_pipe, heavy, zero_negative=True)["prompt_embeds"]
    assert not torch.equal(a[:, :77], b[:, :77])
    torch.testing.assert_close(a[:, 77:], b[:, 77:], rtol=0, atol=0)  # the second chunk alone
    clip_l = slice(0, base_pipe.text_encoder.config.hidden_size)
    torch.testing.assert_close(
        a[:, :77, clip_l].mean(), b[:, :77, clip_l].mean(), rtol=1e-5, atol=1e-6
    )


def test_plain_weights_are_the_text_alone(base_pipe):
    texts = prompts.stage_texts(base_pipe, "a (cat) [with] a hat", None, "(blurry)", None)
    args = weighted_prompts.prompt_kwargs(base_pipe, texts, zero_negative=True)
    assert "prompt_embeds" in args  # ( ) and [ ] weigh
    texts = prompts.stage_texts(base_pipe, "a (cat:1) \\(with\\) a hat", None, "", None)
    args = weighted_prompts.prompt_kwargs(base_pipe, texts, zero_negative=True)
    assert args["prompt"] == "a cat (with) a hat"
    assert args["prompt_2"] == "a cat (with) a hat"


def test_too_many_chunks_is_an_error(base_pipe):
    texts = prompts.stage_texts(base_pipe, "a BREAK " * 6 + "b", None, None, None)
    with pytest.raises(InputError, match=r"7 chunks of 75 tokens.*the limit is 6"):
        weighted_prompts.encode(base_pipe, texts, zero_negative=True)


@torch.no_grad()
def test_clip_skip_reads_an_earlier_layer_before_the_weights(base_pipe):
    """clip_skip 1: the weights apply to hidden_states[-3], of the prompt and the negative."""
    texts = prompts.stage_texts(base_pipe, "a (cat:1.3)", None, "(blurry:1.4)", None)
    ours = weighted_prompts.encode(base_pipe, texts, zero_negative=True, clip_skip=1)
    embeds, pooled = expected_embeds(base_pipe, [weighted(("a ", 1.0), ("cat", 1.3))], layer=-3)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=1e-5)
    neg, _ = expected_embeds(base_pipe, [weighted(("blurry", 1.4))], layer=-3)
    torch.testing.assert_close(ours["negative_prompt_embeds"], neg, rtol=0, atol=1e-5)
    # plain text with clip_skip: diffusers encodes it only where there is no negative text
    plain = prompts.stage_texts(base_pipe, "a (cat:1)", None, None, None)
    assert weighted_prompts.prompt_kwargs(base_pipe, plain, True, clip_skip=1)["prompt"] == "a cat"
    plain = prompts.stage_texts(base_pipe, "a (cat:1)", None, "blurry", None)
    assert "prompt_embeds" in weighted_prompts.prompt_kwargs(base_pipe, plain, True, clip_skip=1)
