"""The operator's limits (SDXL_MAX_*) written into the OpenAPI documents this server publishes,
so that forms and fuzzers stay inside them. The boundary (`sdxl.inputs.rules`) enforces them
whatever a client read; which input each cap limits is said once, in `sdxl.config.INPUTS`."""

from __future__ import annotations

import copy

from sdxl.config import INPUTS, MIN_SIDE, SIZE_MULTIPLE
from sdxl.inputs.surface import Surface
from sdxl.settings import Caps


def with_caps(properties: dict, caps: Caps, surface: Surface) -> dict:
    """A copy of a JSON-schema `properties` object (in `surface`'s names) with the caps."""
    out = copy.deepcopy(properties)
    for field in surface.fields:
        cap_name = INPUTS[field.input].cap if field.input else None
        prop = _plain(out.get(field.name))
        if cap_name is None or prop is None:
            continue
        if cap_name == "max_prompt_chars" and prop.get("type") == "string":
            prop["maxLength"] = min(
                prop.get("maxLength", caps.max_prompt_chars), caps.max_prompt_chars
            )
        elif cap_name == "max_pixels" and caps.max_pixels != Caps.max_pixels:
            # The widest side that can still be valid (the other side at its minimum).
            side = caps.max_pixels // MIN_SIDE // SIZE_MULTIPLE * SIZE_MULTIPLE
            note = f" Width x height at most {caps.max_pixels} pixels (SDXL_MAX_PIXELS)."
            out[field.name]["description"] = out[field.name].get("description", "") + note
            if "maximum" in prop and INPUTS[field.input].ge == MIN_SIDE:  # a side, not a scale
                prop["maximum"] = max(MIN_SIDE, min(prop["maximum"], side))
        elif cap_name in ("max_steps", "max_outputs") and "maximum" in prop:
            prop["maximum"] = min(prop["maximum"], getattr(caps, cap_name))
    return out


def _plain(prop: dict | None) -> dict | None:
    """The schema of the value itself: a nullable field's non-null alternative."""
    if prop is None:
        return None
    for option in prop.get("anyOf", ()):
        if option.get("type") != "null":
            return option
    return prop


def cog_schema_with_caps(schema: dict, caps: Caps, surface: Surface) -> dict:
    """The predictor's OpenAPI document with the caps in its Input properties."""
    if caps == Caps():
        return schema
    out = copy.deepcopy(schema)
    inputs = out["components"]["schemas"]["Input"]
    inputs["properties"] = with_caps(inputs["properties"], caps, surface)
    return out


def inline_input_schema(schema: dict) -> dict:
    """The predictor's Input schema with its enum references written out, for the request
    body of POST /v1/predictions in this server's own OpenAPI document."""
    components = schema["components"]["schemas"]
    inputs = copy.deepcopy(components["Input"])
    for prop in inputs["properties"].values():
        for ref in prop.pop("allOf", []):
            enum = components[ref["$ref"].rsplit("/", 1)[1]]
            prop.update(type=enum["type"], enum=enum["enum"])
        prop.pop("x-order", None)
    return inputs
