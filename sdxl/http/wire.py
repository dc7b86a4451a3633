"""How each API's clients write values on the wire, before the rules read them
(`sdxl.inputs.rules`): numbers sent as strings ("0.8", as the Replicate guide's JavaScript and
AUTOMATIC1111's pydantic models take them), or a multipart form's text, whose numbers and
true/false come as text too. A text that is not a number stays text, so the rules answer it
as they answer any value of the wrong type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import Checked, Surface
from sdxl.numbers import number_from_text
from sdxl.settings import Caps


@dataclass(frozen=True)
class Wire:
    numbers_from_strings: bool = False  # "0.8" for a number
    form_text: bool = False  # a form's fields: numbers and true/false come as text

    def typed(self, body: Mapping[str, Any], surface: Surface) -> dict[str, Any]:
        """`body` with the texts that stand for numbers or booleans made those."""
        if not (self.numbers_from_strings or self.form_text):
            return dict(body)
        return {name: self._typed(surface, name, raw) for name, raw in body.items()}

    def _typed(self, surface: Surface, name: Any, raw: Any) -> Any:
        spec = surface.by_name.get(name) if isinstance(name, str) else None
        if spec is None or not isinstance(raw, str):
            return raw
        kind = spec.value_kind
        if kind in ("integer", "number"):
            number = number_from_text(raw, integer=kind == "integer")
            return raw if number is None else number
        if kind == "boolean" and self.form_text and raw in ("true", "false"):
            return raw == "true"
        return raw


JSON = Wire()  # values as JSON types them


def checked(
    body: Mapping[str, Any], surface: Surface, wire: Wire, caps: Caps, loras=None
) -> Checked:
    """The boundary's check (`check_fields`, with the caller's LoRA check `loras`:
    `Service.lora_check`) of a body as `wire` sends it."""
    return check_fields(wire.typed(body, surface), surface, caps, loras)
