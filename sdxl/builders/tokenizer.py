"""CLIP's tokenizer files, written offline: vocab.json, merges.txt, special_tokens_map.json and
tokenizer_config.json, as SDXL's tokenizer folders hold them. The merges are a tiny BPE learnt
here (the tiny model, the trainer's tiny CLIPSeg) or CLIP's own (the full-size random model,
`sdxl.builders.random_full`); the vocabulary follows from them as CLIP builds it."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

# Words the tiny BPE learns merges from, so that common prompt words become few tokens.
_CORPUS = (
    "a photo of a cat with a hat an astronaut riding a rainbow unicorn studio portrait "
    "dog bear tiger colored ugly soft blurry out of focus low quality garish distorted "
    "disfigured the in on at and cinematic film painting art digital high detail sharp"
).split()
TINY_MERGE_COUNT = 120


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_merges() -> list[tuple[str, str]]:
    """The tiny tokenizer's merges, learnt from a few prompt words."""
    return _learn_merges(_CORPUS, TINY_MERGE_COUNT)


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """A minimal BPE trainer: repeatedly merge the most frequent adjacent pair."""
    split = [[*w[:-1], w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs = Counter(p for toks in split for p in pairwise(toks))
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        for toks in split:
            i = 0
            while i < len(toks) - 1:
                if (toks[i], toks[i + 1]) == best:
                    toks[i : i + 2] = [toks[i] + toks[i + 1]]
                i += 1
    return merges


def write_tokenizer(folder: Path, pad_token: str, merges: list[tuple[str, ...]]) -> int:
    """A CLIP byte-level BPE tokenizer of `merges` in `folder`; returns its vocabulary size.
    The vocabulary is CLIP's: the 256 byte characters, each again as a word's end, the merges,
    then the start and end tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {
        **special,
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)
