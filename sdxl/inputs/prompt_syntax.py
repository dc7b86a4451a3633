"""AUTOMATIC1111's prompt language, parsed into weighted pieces of text (our own reading of its
documented rules; its code is AGPL and is not used).

- `(text)` multiplies the weight of what it holds by 1.1, `[text]` divides it by 1.1; nested
  brackets multiply again; `(text:1.3)` sets the multiplier to 1.3.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; an unmatched `)` or `]`
  is literal text; a bracket left open applies to the end of the prompt.
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk. In A1111 a BREAK
  inside brackets is silently read as the word "BREAK" at a negative weight; here it is a
  break wherever it stands.
- `<lora:name:weight>` tags (extra networks) are taken out before parsing, by `lora_tags`.

`parse` returns pieces in order, with consecutive pieces of equal weight joined; `BREAK`
stands between them as the `BREAK` object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdxl.errors import InputError

ROUND = 1.1  # A1111's multiplier for ( )
SQUARE = 1 / 1.1  # and for [ ]
LORA_WEIGHT_RANGE = (-2.0, 2.0)  # what a <lora:name:weight> tag may ask for

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_TOKEN = re.compile(
    rf"""
    (?P<escape>\\[()\[\]\\])       # a literal bracket or backslash
    | (?P<weight>:\s*(?P<number>{_NUMBER})\s*\))   # the end of (text:1.3)
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+ | [:\\])
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_LORA_TAG = re.compile(r"<lora:([^<>:]+)(?::([^<>]*))?>")


class _Break:
    def __repr__(self) -> str:
        return "BREAK"


BREAK = _Break()


@dataclass(frozen=True)
class Piece:
    """Text that is encoded at one weight."""

    text: str
    weight: float


@dataclass(frozen=True)
class LoraTag:
    """`<lora:name:weight>` as written in a prompt."""

    name: str
    weight: float
    written: str  # the tag as the user wrote it, for messages


def parse(prompt: str) -> list[Piece | _Break]:
    """The prompt's pieces with their weights, and BREAK between chunks."""
    pieces: list[list] = []  # [text, weight], or [BREAK, None]
    round_open: list[int] = []  # where each open ( began in `pieces`
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[0] is not BREAK:
                piece[1] *= factor

    for token in _TOKEN.finditer(prompt):
        kind, value = token.lastgroup, token.group(0)
        if kind == "escape":
            pieces.append([value[1], 1.0])
        elif kind == "open":
            (round_open if value == "(" else square_open).append(len(pieces))
        elif kind == "weight" and round_open:
            scale(round_open.pop(), float(token.group("number")))
        elif kind == "close" and value == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif kind == "close" and value == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            _add_text(pieces, value)
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    return _joined(pieces)


def _add_text(pieces: list[list], text: str) -> None:
    for i, part in enumerate(_BREAK.split(text)):
        if i:
            pieces.append([BREAK, None])
        if part:
            pieces.append([part, 1.0])


def _joined(pieces: list[list]) -> list[Piece | _Break]:
    joined: list[Piece | _Break] = []
    for text, weight in pieces:
        if text is BREAK:
            joined.append(BREAK)
        elif joined and isinstance(joined[-1], Piece) and joined[-1].weight == weight:
            joined[-1] = Piece(joined[-1].text + text, weight)
        else:
            joined.append(Piece(text, weight))
    return joined or [Piece("", 1.0)]


def is_plain(pieces: list[Piece | _Break]) -> bool:
    """Whether the pieces encode as their text alone: every weight 1.0 and no BREAK."""
    return all(isinstance(p, Piece) and p.weight == 1.0 for p in pieces)


def plain_text(pieces: list[Piece | _Break]) -> str:
    """The text with the syntax removed (BREAK as a space)."""
    return "".join(p.text if isinstance(p, Piece) else " " for p in pieces)


def lora_tags(prompt: str, field: str = "prompt") -> tuple[str, list[LoraTag]]:
    """The prompt without its `<lora:name:weight>` tags, and the tags in order."""
    tags = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        tags.append(LoraTag(name, _tag_weight(weight, match.group(0), field), match.group(0)))
    return _LORA_TAG.sub("", prompt), tags


def _tag_weight(weight: str | None, written: str, field: str) -> float:
    if weight is None or not weight.strip():
        return 1.0
    low, high = LORA_WEIGHT_RANGE
    try:
        value = float(weight.split(":")[0])  # A1111 allows :te:unet weights; the first counts
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise InputError(
            f"{written[:80]!r} has the weight {weight[:20]!r}; write <lora:name:w> "
            f"with w a number from {low:g} to {high:g} (1 when left out)",
            field,
        )
    return value
