"""The JSON schema of a request body, from its API's Surface (OpenAPI 3.1): the fields, their
defaults, bounds and choices, with the operator's caps; the same table the rules read."""

from __future__ import annotations

from sdxl.http.caps import with_caps
from sdxl.inputs.surface import UNSET, Field, Surface
from sdxl.settings import Caps

JSON_TYPES = {
    "image": {"type": "string"},
    "strings": {"type": "array", "items": {"type": "string"}},
    "object": {"type": "object"},
    "any": {},
}


def body_schema(surface: Surface, caps: Caps, title: str, form: bool = False) -> dict:
    """`form`: a multipart form, whose image fields are files."""
    properties = {spec.name: _property(spec, form) for spec in surface.fields}
    return {
        "title": title,
        "type": "object",
        "properties": with_caps(properties, caps, surface),
        "required": [spec.name for spec in surface.fields if spec.required],
        **({} if surface.ignore_unknown else {"additionalProperties": False}),
    }


def _property(spec: Field, form: bool) -> dict:
    kind = spec.value_kind
    prop = dict(JSON_TYPES.get(kind, {"type": kind}))
    if kind == "image" and form:
        prop["format"] = "binary"
    lo, hi = spec.bounds
    if kind in ("integer", "number"):
        prop.update({k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None})
    if spec.choice_map is not None:
        prop["enum"] = list(spec.choice_map)
    limit = spec.spec.max_length if spec.spec is not None else None
    if kind == "string" and limit is not None:
        prop["maxLength"] = limit
    if spec.default is not UNSET:
        prop["default"] = spec.default
    if spec.nullable:
        prop = {"anyOf": [prop, {"type": "null"}], "default": prop.pop("default", None)}
    return {"title": spec.name, **prop, "description": spec.description}


def body_doc(title: str, form: bool = False) -> dict:
    """A route's `openapi_extra`: its request body is the component `title`."""
    kind = "multipart/form-data" if form else "application/json"
    schema = {"$ref": f"#/components/schemas/{title}"}
    return {"requestBody": {"required": True, "content": {kind: {"schema": schema}}}}
