"""Prompts longer than CLIP's 77 tokens, encoded in chunks instead of silently cut.

Short prompts are left to diffusers (`encode()` returns None), so their embeddings are exactly
diffusers' own. A long prompt is split into chunks of 75 tokens; each chunk is framed with
BOS/EOS, padded to 77 and encoded as SDXL encodes a prompt (penultimate hidden states of each
text encoder, concatenated); the chunks are joined along the sequence. The pooled embedding is
the second encoder's for the first chunk. Positive and negative get the same number of chunks.

`clip_skip` (diffusers' name; AUTOMATIC1111's CLIP_stop_at_last_layers - 1) takes the hidden
states that many layers before the penultimate one, in every text encoder, for the prompt and
the negative prompt alike. diffusers' own encoding applies it to the prompt only, so with
clip_skip a negative prompt is encoded here, never by diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdxl.errors import InputError

MAX_CHUNKS = 6  # 450 tokens: beyond that, a prompt is an error, not a silent cut


@dataclass(frozen=True)
class Texts:
    """The strings one stage encodes, per text encoder (None: no negative prompt)."""

    prompts: tuple[str, ...]
    negatives: tuple[str, ...] | None


def token_counts(tokenizer, texts: tuple[str, ...]) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]


def _chunks(tokenizer, text: str) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    size = tokenizer.model_max_length - 2
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def frame(tokenizer, chunk: list[int]) -> list[int]:
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))


def encoders(pipe) -> list[tuple]:
    """(tokenizer, text encoder) of each encoder the pipeline has, in SDXL's order."""
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    return [(tok, enc) for tok, enc in pairs if enc is not None]


def hidden_layer(clip_skip: int | None) -> int:
    """The index in `hidden_states` SDXL reads: the penultimate layer, `clip_skip` before it."""
    return -2 - (clip_skip or 0)


def check_clip_skip(pipe, clip_skip: int | None) -> None:
    """A clip_skip every text encoder of `pipe` has the layers for (hidden_states[0], the
    token embeddings, is the deepest it may reach)."""
    if clip_skip is None:
        return
    layers = [enc.config.num_hidden_layers for _, enc in encoders(pipe)]
    if clip_skip > min(layers) - 1:
        raise InputError(
            f"clip_skip={clip_skip} skips more layers than this model's text encoders have "
            f"({' and '.join(map(str, layers))} layers); the most is {min(layers) - 1} "
            f"(AUTOMATIC1111's CLIP_stop_at_last_layers {min(layers)})",
            "clip_skip",
            clip_skip,
        )


def _encode_chunks(pipe, texts: tuple[str, ...], n_chunks: int, clip_skip: int | None = None):
    """(hidden states [1, 77*n, dim], pooled [1, dim]) for one prompt across the encoders."""
    per_encoder, pooled = [], None
    for (tokenizer, encoder), text in zip(encoders(pipe), texts, strict=True):
        chunks = _chunks(tokenizer, text)
        chunks += [[]] * (n_chunks - len(chunks))
        ids = torch.tensor([frame(tokenizer, c) for c in chunks], device=encoder.device)
        out = encoder(ids, output_hidden_states=True)
        if out[0].ndim == 2:  # the projection model: pooled text embeds
            pooled = out[0][:1]
        hidden = out.hidden_states[hidden_layer(clip_skip)]
        per_encoder.append(hidden.reshape(1, -1, hidden.shape[-1]))
    return torch.cat(per_encoder, dim=-1), pooled


def stage_texts(pipe, prompt, prompt_2, negative, negative_2) -> Texts:
    """The strings each encoder of `pipe` reads, following diffusers' defaults."""
    prompt_2 = prompt_2 or prompt
    if pipe.text_encoder is None:  # refiner: one encoder, reading `prompt`
        return Texts((prompt,), None if negative is None else (negative,))
    if negative is None:
        return Texts((prompt, prompt_2), None)
    return Texts((prompt, prompt_2), (negative, negative_2 or negative))


def needs_chunking(pipe, texts: Texts) -> bool:
    tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
    all_texts = [texts.prompts, *([texts.negatives] if texts.negatives else [])]
    longest = max(
        n
        for group in all_texts
        for tok, t in zip(tokenizers, group, strict=True)
        for n in token_counts(tok, (t,))
    )
    limit = tokenizers[0].model_max_length - 2
    if longest > limit * MAX_CHUNKS:
        raise InputError(
            f"a prompt has {longest} tokens; the limit is {limit * MAX_CHUNKS} "
            f"({MAX_CHUNKS} chunks of {limit}); shorten the prompt or negative prompt",
            "prompt",
        )
    return longest > limit


def diffusers_encodes(pipe, texts: Texts, zero_negative: bool, clip_skip: int | None) -> bool:
    """Whether diffusers' own encoding (with `clip_skip=` when set) is this server's: the
    prompts fit one chunk and, with clip_skip, there is no negative text for diffusers to
    encode (it would read the negative's penultimate layer whatever clip_skip says)."""
    if needs_chunking(pipe, texts):
        return False
    return clip_skip is None or (texts.negatives is None and zero_negative)


@torch.no_grad()
def encode(pipe, texts: Texts, zero_negative: bool, clip_skip: int | None = None) -> dict | None:
    """Embedding kwargs for `pipe(...)`, or None when diffusers' own encoding applies."""
    if diffusers_encodes(pipe, texts, zero_negative, clip_skip):
        return None
    tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
    groups = [texts.prompts] + ([texts.negatives] if texts.negatives else [])
    n_chunks = max(
        len(_chunks(tok, t)) for g in groups for tok, t in zip(tokenizers, g, strict=True)
    )
    embeds, pooled = _encode_chunks(pipe, texts.prompts, n_chunks, clip_skip)
    if texts.negatives is None and zero_negative:
        negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        negatives = texts.negatives or ("",) * len(texts.prompts)
        negative, negative_pooled = _encode_chunks(pipe, negatives, n_chunks, clip_skip)
    return embedding_kwargs(pipe, embeds, pooled, negative, negative_pooled)


def embedding_kwargs(pipe, embeds, pooled, negative, negative_pooled) -> dict:
    """The four embedding arguments of `pipe(...)`, in its UNet's dtype."""
    dtype = pipe.unet.dtype
    return {
        "prompt_embeds": embeds.to(dtype),
        "pooled_prompt_embeds": pooled.to(dtype),
        "negative_prompt_embeds": negative.to(dtype),
        "negative_pooled_prompt_embeds": negative_pooled.to(dtype),
    }
