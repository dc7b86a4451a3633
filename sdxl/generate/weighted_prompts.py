"""Prompts in AUTOMATIC1111's language (`sdxl.inputs.prompt_syntax`) encoded as A1111 encodes
them for SDXL, in each text encoder:

1. Each piece of text is tokenized alone and its tokens carry the piece's weight. The tokens
   fill chunks of 75; `BREAK` ends a chunk early (the rest is padding); a chunk that fills up
   within 20 tokens of a comma ends after that comma instead, the tokens after it moving to
   the next chunk (A1111's `comma_padding_backtrack`, default 20).
2. Each chunk is framed with BOS/EOS, padded to 77 and encoded as SDXL encodes a prompt (the
   penultimate hidden states, or those `clip_skip` layers before them); each token's hidden
   state is multiplied by its weight and the chunk is rescaled so that its mean equals the
   unweighted mean (A1111's default emphasis, "Original").
3. The chunks are joined along the sequence; the pooled embedding is the second encoder's for
   the first chunk, unweighted. A negative prompt with fewer chunks is padded with empty ones,
   as A1111 does with "pad prompt/negative prompt to be same length".

A prompt whose weights are all 1.0, with no BREAK and within 75 tokens, is handed to diffusers
as its text alone, so it gives exactly the pixels of that text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdxl.errors import InputError
from sdxl.generate import prompts
from sdxl.inputs.prompt_syntax import BREAK, is_plain, parse, plain_text

COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack: how far back a chunk may end at a comma


@dataclass
class Chunk:
    """Up to 75 tokens and their weights, before framing."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunks_of(tokenizer, pieces) -> list[Chunk]:
    """The pieces' tokens in chunks of at most 75, as A1111 cuts them."""
    size = tokenizer.model_max_length - 2
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    chunk, last_comma = Chunk(), -1
    for piece in pieces:
        if piece is BREAK:
            chunks.append(chunk)
            chunk, last_comma = Chunk(), -1
            continue
        for token in tokenizer(piece.text, add_special_tokens=False).input_ids:
            if token == comma:
                last_comma = len(chunk.ids)
            elif (
                len(chunk.ids) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                chunks.append(Chunk(chunk.ids[:cut], chunk.weights[:cut]))
                chunk, last_comma = Chunk(chunk.ids[cut:], chunk.weights[cut:]), -1
            if len(chunk.ids) == size:
                chunks.append(chunk)
                chunk, last_comma = Chunk(), -1
            chunk.ids.append(token)
            chunk.weights.append(piece.weight)
    if chunk.ids or not chunks:
        chunks.append(chunk)
    return chunks


def emphasized(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each token's hidden state times its weight, each chunk rescaled to its former mean."""
    original = hidden.mean(dim=(1, 2), keepdim=True)
    weighted = hidden * weights[..., None].to(hidden.dtype)
    return weighted * (original / weighted.mean(dim=(1, 2), keepdim=True))


def _framed_weights(chunk: Chunk, length: int) -> list[float]:
    return [1.0, *chunk.weights] + [1.0] * (length - 1 - len(chunk.weights))


def _encode_one(tokenizer, encoder, chunks: list[Chunk], n_chunks: int, clip_skip: int | None):
    chunks = chunks + [Chunk() for _ in range(n_chunks - len(chunks))]
    length = tokenizer.model_max_length
    ids = torch.tensor([prompts.frame(tokenizer, c.ids) for c in chunks], device=encoder.device)
    weights = torch.tensor([_framed_weights(c, length) for c in chunks], device=encoder.device)
    out = encoder(ids, output_hidden_states=True)
    pooled = out[0][:1] if out[0].ndim == 2 else None  # the projection model's text embeds
    hidden = emphasized(out.hidden_states[prompts.hidden_layer(clip_skip)], weights)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


def _encode(pipe, per_encoder_chunks: list[list[Chunk]], n_chunks: int, clip_skip: int | None):
    hidden, pooled = [], None
    for (tokenizer, encoder), chunks in zip(
        prompts.encoders(pipe), per_encoder_chunks, strict=True
    ):
        states, this_pooled = _encode_one(tokenizer, encoder, chunks, n_chunks, clip_skip)
        hidden.append(states)
        pooled = this_pooled if this_pooled is not None else pooled
    return torch.cat(hidden, dim=-1), pooled


def _chunked(pipe, texts: tuple[str, ...]) -> list[list[Chunk]]:
    return [
        chunks_of(tokenizer, parse(text))
        for (tokenizer, _), text in zip(prompts.encoders(pipe), texts, strict=True)
    ]


def plain_texts(texts: prompts.Texts) -> prompts.Texts | None:
    """The texts with the syntax removed, when that is all the syntax does (else None)."""
    groups = [texts.prompts, *([texts.negatives] if texts.negatives else [])]
    parsed = [[parse(t) for t in group] for group in groups]
    if not all(is_plain(pieces) for group in parsed for pieces in group):
        return None
    plain = [tuple(plain_text(pieces) for pieces in group) for group in parsed]
    return prompts.Texts(plain[0], plain[1] if texts.negatives else None)


@torch.no_grad()
def encode(pipe, texts: prompts.Texts, zero_negative: bool, clip_skip: int | None = None) -> dict:
    """Embedding kwargs for `pipe(...)` (always: the caller checked the syntax is not plain)."""
    positive = _chunked(pipe, texts.prompts)
    negative = _chunked(pipe, texts.negatives) if texts.negatives else None
    n_chunks = max(len(c) for group in (positive, negative or []) for c in group)
    if n_chunks > prompts.MAX_CHUNKS:
        raise InputError(
            f"a prompt needs {n_chunks} chunks of 75 tokens (BREAK counts as the end of one); "
            f"the limit is {prompts.MAX_CHUNKS}; shorten the prompt or negative prompt",
            "prompt",
        )
    embeds, pooled = _encode(pipe, positive, n_chunks, clip_skip)
    if negative is None and zero_negative:
        negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        empty = [[Chunk()] for _ in prompts.encoders(pipe)]
        negative_embeds, negative_pooled = _encode(pipe, negative or empty, n_chunks, clip_skip)
    return prompts.embedding_kwargs(pipe, embeds, pooled, negative_embeds, negative_pooled)


def prompt_kwargs(
    pipe, texts: prompts.Texts, zero_negative: bool, clip_skip: int | None = None
) -> dict:
    """The prompt arguments of `pipe(...)` for texts in A1111's syntax: the texts without the
    syntax, left to diffusers, where that is all the syntax does and diffusers encodes them
    as this server does (`prompts.diffusers_encodes`); else the embeddings."""
    plain = plain_texts(texts)
    if plain is not None and prompts.diffusers_encodes(pipe, plain, zero_negative, clip_skip):
        return _as_arguments(plain)
    return encode(pipe, texts, zero_negative, clip_skip)


def _as_arguments(texts: prompts.Texts) -> dict:
    names = ("prompt", "prompt_2")
    args = dict(zip(names, texts.prompts, strict=False))
    negatives = texts.negatives or (None,) * len(texts.prompts)
    args.update(zip(("negative_prompt", "negative_prompt_2"), negatives, strict=False))
    return args
