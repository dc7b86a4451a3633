"""The one place that says whether a request is valid. Each rule is written here once, with one
message, and every API reports it in its own field names and error shape.

Two tiers, each run once per request and only for the inputs that apply to it:

1. `check_fields`, at an API's boundary (its 422): the schema (unknown fields, types, bounds,
   choices, lengths, image sources checked cheaply), the operator's caps (SDXL_MAX_*), and the
   LoRAs the request names, by a check the API is handed for its caller (the engine's).
2. `check_request` (`sdxl.inputs.model_rules`), when the engine prepares the job (the job
   fails): the model's rules that need no model loaded. What needs the model or the decoded
   image follows in the same preparation: the step plan (`sdxl.generate.schedulers`) and the
   images (`sdxl.images.inputs`, `sdxl.images.fit`).

An API describes itself as a `Surface` (`sdxl.inputs.surface`): its `Field`s (its spelling of
each engine input, its own defaults, bounds and choices where it has them) and what null
means; values arrive typed (the API layer reads numbers sent as strings, `sdxl.http.wire`).
Nothing else about validity lives in an API.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from sdxl.config import (
    ASPECT_RATIOS,
    BASE_IMAGE_REFINER_STRENGTH,
    INPUTS,
)
from sdxl.errors import InputError, field_error
from sdxl.images.inputs import bytes_source, source_from_text
from sdxl.inputs.control_units import check_units, with_controls
from sdxl.inputs.hires_size import hires_size
from sdxl.inputs.image_prompt import check_image_prompt, with_image_prompt
from sdxl.inputs.lora_refs import with_loras
from sdxl.inputs.request import Request
from sdxl.inputs.scheduler_table import check_few_step, refiner_schedule_for
from sdxl.inputs.surface import (
    UNSET,
    Checked,
    Field,
    InvalidInputs,
    Problem,
    Surface,
)
from sdxl.inputs.weights_source import weights_source
from sdxl.settings import Caps, LocalFiles

KIND_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "image": "an image",
    "strings": "a list of strings",
    "object": "a JSON object",
    "any": "a JSON value",
}
LORA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


# ---- tier 1: the boundary -----------------------------------------------------------------
def check_fields(
    body: Mapping[str, Any],
    surface: Surface,
    caps: Caps,
    loras: Callable[[Request], None] | None = None,
) -> Checked:
    """`body` (an API's request in its names) checked against the API's schema and the caps
    (with the files on this machine that `replicate_weights` may name, `caps.local_files`),
    then its LoRAs by `loras` (the engine's `lora_check` for the caller: the names the
    caller may use, the per-request bound); InvalidInputs lists every problem."""
    given: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, raw in body.items():
        spec = surface.by_name.get(name) if isinstance(name, str) else None
        if spec is None:
            if not surface.ignore_unknown:
                problems.append(_unknown(str(name), surface))
            continue
        if raw is None and not spec.nullable and surface.null_is_unset:
            continue
        try:
            parsed[name] = _parse(spec, raw, surface, caps.local_files)
        except InputError as err:
            problems.append(Problem(name, str(err)))
            continue
        given[name] = raw if spec.value_kind == "image" else parsed[name]
    for spec in surface.fields:
        if spec.required and spec.name not in body:
            problems.append(Problem(spec.name, f"{spec.name} is required; add it to the request"))
    if problems:
        raise InvalidInputs(problems)
    try:
        values = _engine_values(parsed, surface)
    except InputError as err:
        raise InvalidInputs([surface.problem(err)]) from None
    found_errors = (*_over_caps(values, caps), *_few_step(values), *_controls(values))
    problems = [surface.problem(err) for err in found_errors]
    if problems:
        raise InvalidInputs(problems)
    found = Checked(values, given)
    if loras is not None:
        try:
            loras(found.request())
        except InputError as err:
            raise InvalidInputs([surface.problem(err)]) from None
    return found


def _few_step(values: Mapping[str, Any]) -> list[InputError]:
    """LCM's and TCD's step limit, on the steps that apply to this request."""
    name, steps = _value(values, "scheduler"), _value(values, "num_inference_steps")
    checks = [(name, "num_inference_steps", steps, None)]
    if _value(values, "refine") == "base_image_refiner":
        wanted = _value(values, "refine_steps") or steps
        schedule = refiner_schedule_for(wanted, BASE_IMAGE_REFINER_STRENGTH)
        checks.append((name, "refine_steps", schedule, wanted))
    found = []
    for scheduler, field, count, wanted in checks:
        try:
            check_few_step(scheduler, count, field, wanted, BASE_IMAGE_REFINER_STRENGTH)
        except InputError as err:
            found.append(err)
    strength = _value(values, "hires_strength")
    if _hires(values) and strength > 0:  # the second pass: its own scheduler, where given
        hires_name = _value(values, "hires_scheduler") or name
        wanted = _value(values, "hires_steps") or steps
        schedule = refiner_schedule_for(wanted, strength)
        try:
            check_few_step(hires_name, schedule, "hires_steps", wanted, strength, "hires fix's")
        except InputError as err:
            found.append(err)
    return found


def _unknown(name: str, surface: Surface) -> Problem:
    close = difflib.get_close_matches(name, list(surface.by_name), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = name if len(name) <= 60 else name[:57] + "..."
    return Problem(shown, f"{shown!r} is not an input of this API; {hint}remove it or fix it")


def _parse(spec: Field, raw: Any, surface: Surface, local: LocalFiles) -> Any:
    """One field's value in the API's units, checked; InputError names the field."""
    kind = spec.value_kind
    if raw is None:
        if spec.nullable:
            return None
        raise field_error(
            "{field} must be {kind}", spec.name, raw, words={"kind": KIND_WORDS[kind]}
        )
    if kind == "image":
        if isinstance(raw, bytes):
            source = bytes_source(raw, spec.name)
        elif isinstance(raw, str):
            source = source_from_text(raw, spec.name, spec.image_forms)
        else:
            raise field_error("{field:name} must be a string (a URL or a data URI)", spec.name, raw)
        return dataclasses.replace(source, name=spec.input or spec.name, mask=spec.mask)
    value = _typed(spec, raw, kind)
    choices = spec.choice_map
    if choices is not None:
        check_choice(spec.name, value, choices)
        return value
    if kind in ("integer", "number"):
        check_range(spec.name, value, *spec.bounds)
    if spec.input == "replicate_weights" and value is not None:
        value = weights_source(value, local)  # a URL, or a local file the surface may name
    limit = spec.spec.max_length if spec.spec is not None else None
    if kind == "string" and limit is not None and len(value) > limit:
        raise _too_long(spec.name, value, limit, None)
    return value


def check_range(name: str, value: float, lo: float | None, hi: float | None) -> None:
    """The bounds rule, for a field's value or a value an API derives from its own fields
    (OpenAI's size, AUTOMATIC1111's sampler)."""
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    words = {"lo": bound_text(lo), "hi": bound_text(hi)}
    raise field_error("{field} is out of range; use {lo}..{hi}", name, value, words=words)


def bound_text(bound: float) -> str:
    """A bound as a person writes it: 4294967295, not 4.29497e+09; 0.01 as 0.01."""
    if isinstance(bound, int) or (isinstance(bound, float) and bound.is_integer()):
        return str(int(bound))
    return f"{bound:g}"


def check_choice(name: str, value: Any, choices) -> None:
    """The choices rule, likewise."""
    if value not in choices:
        words = {"choices": ", ".join(map(str, choices))}
        raise field_error(
            "{field} is not supported; choose one of: {choices}", name, value, words=words
        )


def _typed(spec: Field, raw: Any, kind: str) -> Any:
    ok = {
        "string": isinstance(raw, str),
        "integer": isinstance(raw, int) and not isinstance(raw, bool),
        "number": isinstance(raw, int | float) and not isinstance(raw, bool),
        "boolean": isinstance(raw, bool),
        "strings": isinstance(raw, list) and all(isinstance(item, str) for item in raw),
        "object": isinstance(raw, dict),
        "any": True,
    }[kind]
    if not ok:
        raise field_error(
            "{field} must be {kind}", spec.name, raw, words={"kind": KIND_WORDS[kind]}
        )
    if kind == "number" and not math.isfinite(raw):
        raise field_error("{field} must be a finite number", spec.name, raw)
    return raw + 0.0 if isinstance(raw, float) else raw  # + 0.0: -0.0 is 0.0


def _too_long(name: str, text: str, limit: int, variable: str | None) -> InputError:
    setting = f" ({variable})" if variable else ""
    return InputError(
        "{field:name} has {n} characters; the limit is {limit}" + setting,
        name,
        text[:80],
        words={"n": len(text), "limit": limit},
    )


def _engine_values(parsed: dict[str, Any], surface: Surface) -> dict[str, Any]:
    """The API's values (defaults filled in) in the engine's names and units."""
    values = dict(surface.fixed)
    complete = dict(parsed)
    for spec in surface.fields:
        if spec.name not in complete and spec.default is not UNSET:
            complete[spec.name] = spec.default
    for name, value in complete.items():
        spec = surface.by_name[name]
        if spec.input is None:
            continue
        if spec.choice_map is not None:
            value = spec.choice_map[value] if value is not None else None
        if spec.to_input is not None:
            value = spec.to_input(value)
        values[spec.input] = value
    if surface.assemble is not None:
        values.update(surface.assemble(complete, set(parsed)))
    # the `loras` string and a1111's <lora:..> tags as a stack; controlnet_N as units
    # ip_adapter_image as the adapter's images, its block scales' JSON read
    return with_image_prompt(with_controls(with_loras(values)))


def _controls(values: Mapping[str, Any]) -> list[InputError]:
    """The ControlNet units' rules (sdxl.inputs.control_units), with the request's mode."""
    mode = "txt2img"
    if _value(values, "image") is not None:
        mode = "img2img" if _value(values, "mask") is None else "inpaint"
    try:
        check_units(
            values.get("controls", ()),
            mode=mode,
            refine=_value(values, "refine"),
            cache_interval=_value(values, "cache_interval"),
        )
        check_image_prompt(values.get("ip_adapter_images", ()), _value(values, "cache_interval"))
    except InputError as err:
        return [err]
    return []


def _value(values: Mapping[str, Any], name: str) -> Any:
    return values.get(name, INPUTS[name].default)


def check_cap(name: str, value: int, cap_name: str, caps: Caps) -> None:
    """A cap's rule, for a value an API derives (OpenAI's n, AUTOMATIC1111's batches)."""
    cap = getattr(caps, cap_name)
    if value > cap:
        words = {"cap": cap, "variable": Caps.VARIABLES[cap_name]}
        template = "{field} is over this server's limit of {cap} ({variable}); lower it"
        raise field_error(template, name, value, words=words)


def _over_caps(values: Mapping[str, Any], caps: Caps) -> list[InputError]:
    """The operator's caps on the inputs that apply to this request."""
    found = []
    applies = {
        "num_inference_steps": True,
        "refine_steps": _value(values, "refine") == "base_image_refiner",
        "num_outputs": True,
        "hires_steps": _hires(values),
    }
    for name, applied in applies.items():
        value = _value(values, name)
        if applied and value is not None:
            try:
                check_cap(name, value, INPUTS[name].cap, caps)
            except InputError as err:
                found.append(err)
    for name, spec in INPUTS.items():
        text = values.get(name)
        if (
            spec.cap == "max_prompt_chars"
            and text is not None
            and len(text) > caps.max_prompt_chars
        ):
            found.append(_too_long(name, text, caps.max_prompt_chars, "SDXL_MAX_PROMPT_CHARS"))
    if _value(values, "image") is None:
        width, height = output_size(
            *(_value(values, n) for n in ("aspect_ratio", "width", "height"))
        )
        if width * height > caps.max_pixels:
            found.append(
                InputError(
                    "{width:name} x {height:name} = {size} is {pixels} pixels; the limit is "
                    "{limit} (SDXL_MAX_PIXELS); lower {width:name} or {height:name}",
                    "width",
                    width,
                    values={},
                    words={
                        "size": f"{width}x{height}",
                        "pixels": width * height,
                        "limit": caps.max_pixels,
                    },
                )
            )
        elif _hires(values):
            try:
                hires_size(width, height, *_hires_sizes(values), caps.max_pixels)
            except InputError as err:
                found.append(err)
    return found


def _hires(values: Mapping[str, Any]) -> bool:
    """Whether the hires fix's second pass runs (`Request.hires`)."""
    return any(size is not None for size in _hires_sizes(values))


def _hires_sizes(values: Mapping[str, Any]) -> tuple:
    return tuple(_value(values, n) for n in ("hires_scale", "hires_width", "hires_height"))


def output_size(aspect_ratio: str | None, width: int, height: int) -> tuple[int, int]:
    """(width, height) of a text-to-image request: its aspect ratio's, or as given."""
    return ASPECT_RATIOS[aspect_ratio] if aspect_ratio is not None else (width, height)
