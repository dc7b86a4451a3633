"""A request's LoRA stack: which LoRAs apply, each at its own weight, in order.

Two spellings reach it, both read here (no torch, no files: names are resolved when the job is
prepared, `sdxl.adapters.library`):

- the `loras` input: comma-separated items `ref[:weight]`, `ref` a LoRA's name or an http(s)
  URL of a .safetensors file; the weight is what follows the last colon when it reads as a
  number (so `https://host:8443/x.safetensors` is a URL at weight 1.0);
- `<lora:name:weight>` tags in the prompt and the negative prompt, and in prompt_2 and
  negative_prompt_2 (read in the same language), where the prompt syntax is `a1111`
  (`sdxl.inputs.prompt_syntax.lora_tags`): the tags are taken out of the text. A tag of
  prompt_2 or negative_prompt_2 that repeats one already taken (same name, same weight, as when
  a prompt is copied into prompt_2) is that LoRA once; another weight for it is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdxl.config import MAX_NAME_CHARS, MAX_URL_CHARS
from sdxl.errors import InputError
from sdxl.inputs.prompt_syntax import LORA_WEIGHT_RANGE, lora_tags

MOST_ITEMS = 16  # items one `loras` input may list (the engine's own bound is lower)
TAGGED_FIELDS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
SECOND_FIELDS = ("prompt_2", "negative_prompt_2")  # often a copy of the first ones
_BAD_NAME_CHARS = set("/\\\0<>:,")


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a stack: `ref` a name or a URL, `written` as the user wrote it."""

    ref: str
    weight: float
    written: str
    field: str = "loras"

    @property
    def is_url(self) -> bool:
        return is_url(self.ref)

    def shown(self) -> str:
        """For logs and image metadata: a URL is not shown (it may carry a token)."""
        return f"{'<url>' if self.is_url else self.ref}:{self.weight:g}"


def is_url(ref: str) -> bool:
    return ref[:8].lower() == "https://" or ref[:7].lower() == "http://"


def parse_lora_list(text: str | None, field: str = "loras") -> tuple[LoraRef, ...]:
    """The `loras` input's items, checked; InputError names the item and the fix."""
    if text is None or not text.strip():
        return ()
    items = [item.strip() for item in text.split(",")]
    if len(items) > MOST_ITEMS:
        raise InputError(
            f"{field} lists {len(items)} LoRAs; at most {MOST_ITEMS} may be listed", field
        )
    refs = []
    for item in items:
        if not item:
            raise InputError(
                f"{field} has an empty item; separate LoRAs with single commas "
                "(name:0.7, https://host/x.safetensors:0.4)",
                field,
            )
        refs.append(_item(item, field))
    check_unique(refs)
    return tuple(refs)


def _item(item: str, field: str) -> LoraRef:
    ref, colon, tail = item.rpartition(":")
    weight = _number(tail) if colon else None
    if weight is None:
        ref, weight = item, 1.0
    ref = ref.strip()
    lo, hi = LORA_WEIGHT_RANGE
    if not lo <= weight <= hi:
        raise InputError(
            f"{field}: {item[:80]!r} asks for weight {weight:g}; use {lo:g}..{hi:g}", field
        )
    if is_url(ref):
        if len(ref) > MAX_URL_CHARS:
            raise InputError(f"{field}: a URL is over {MAX_URL_CHARS} characters", field)
    elif not ref or len(ref) > MAX_NAME_CHARS or _BAD_NAME_CHARS & set(ref):
        raise InputError(
            f"{field}: {item[:80]!r} is neither a LoRA's name (its file name without "
            f".safetensors, at most {MAX_NAME_CHARS} characters, no / \\ < > : ,) nor an "
            "http(s) URL",
            field,
        )
    return LoraRef(ref, weight, item, field)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def from_tags(prompt: str, field: str) -> tuple[str, tuple[LoraRef, ...]]:
    """(the prompt without its `<lora:...>` tags, their refs in order)."""
    text, tags = lora_tags(prompt, field)
    return text, tuple(LoraRef(t.name, t.weight, t.written, field) for t in tags)


def check_unique(refs) -> None:
    seen: dict[str, LoraRef] = {}
    for ref in refs:
        if ref.ref in seen:
            raise InputError(
                f"{ref.written[:80]!r} ({ref.field}) names the LoRA of "
                f"{seen[ref.ref].written[:80]!r} ({seen[ref.ref].field}) again; give each LoRA "
                "once, with the weight you want",
                ref.field,
            )
        seen[ref.ref] = ref


def with_loras(values: dict) -> dict:
    """Engine values with `loras` as a stack: the `loras` string parsed, and where the prompt
    syntax is a1111 the prompts' tags taken out and added after it."""
    out = dict(values)
    refs = out.get("loras")
    if refs is None or isinstance(refs, str):
        refs = parse_lora_list(refs)
    if out.get("prompt_syntax") == "a1111":
        for field in TAGGED_FIELDS:
            if out.get(field):
                out[field], tagged = from_tags(out[field], field)
                if field in SECOND_FIELDS:
                    tagged = [t for t in tagged if not _repeats(t, refs)]
                refs = (*refs, *tagged)
    check_unique(refs)
    out["loras"] = tuple(refs)
    return out


def _repeats(tag: LoraRef, refs) -> bool:
    return any(ref.ref == tag.ref and ref.weight == tag.weight for ref in refs)
