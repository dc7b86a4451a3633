"""The operator's limits (SDXL_MAX_*) written into the OpenAPI documents this server publishes,
so that forms and fuzzers stay inside them. The engine enforces them whatever a client read."""

from __future__ import annotations

import copy

from sdxl.config import MIN_SIDE, SIZE_MULTIPLE, Caps

# Each API's input name -> which cap bounds it.
CAPPED_NUMBERS = {
    "num_inference_steps": "max_steps",
    "refine_steps": "max_steps",
    "num_inference_steps_refiner": "max_steps",
    "num_outputs": "max_outputs",
    "num_images_per_prompt": "max_outputs",
}
CAPPED_TEXTS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
SIZES = ("width", "height")


def with_caps(properties: dict, caps: Caps) -> dict:
    """A copy of a JSON-schema `properties` object with the caps applied."""
    out = copy.deepcopy(properties)
    for name, cap_name in CAPPED_NUMBERS.items():
        prop = out.get(name)
        if prop is not None and "maximum" in prop:
            prop["maximum"] = min(prop["maximum"], getattr(caps, cap_name))
    for name in CAPPED_TEXTS:
        prop = out.get(name)
        if prop is not None and prop.get("type") == "string":
            prop["maxLength"] = min(
                prop.get("maxLength", caps.max_prompt_chars), caps.max_prompt_chars
            )
    if caps.max_pixels != Caps.max_pixels:
        # The widest side that can still be valid (the other side at its minimum).
        side = caps.max_pixels // MIN_SIDE // SIZE_MULTIPLE * SIZE_MULTIPLE
        for name in SIZES:
            if name in out:
                note = f" Width x height at most {caps.max_pixels} pixels (SDXL_MAX_PIXELS)."
                out[name]["description"] = out[name].get("description", "") + note
                if "maximum" in out[name]:
                    out[name]["maximum"] = max(MIN_SIDE, min(out[name]["maximum"], side))
    return out


def cog_schema_with_caps(schema: dict, caps: Caps) -> dict:
    """The predictor's OpenAPI document with the caps in its Input properties."""
    if caps == Caps():
        return schema
    out = copy.deepcopy(schema)
    inputs = out["components"]["schemas"]["Input"]
    inputs["properties"] = with_caps(inputs["properties"], caps)
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
