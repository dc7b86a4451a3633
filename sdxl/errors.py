"""Errors that reach users: each names the input, its value and the fix.

A `UserError` knows which input it is about (`field`, `value`, in the engine's names, which
are the Cog predictor's). A message that mentions inputs by name is written as a template, so
that each API shows its own spelling without parsing text:

    InputError("{prompt_strength} x {num_inference_steps} is below one step",
               field="prompt_strength", values={"prompt_strength": 0.1, "num_inference_steps": 5})

`{name}` becomes `name=value` and `{name:name}` the bare name, both through the API's `Naming`
(the DataCrunch API says `strength=0.1`, and `refiner_ratio=0.2` for `high_noise_frac=0.8`);
`{field}` stands for the error's own input.
`str(err)` is the message in the engine's own names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Naming:
    """How one API spells the engine's inputs: renamed fields, and values converted with them."""

    names: Mapping[str, str] = field(default_factory=dict)
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def name(self, engine_name: str) -> str:
        return self.names.get(engine_name, engine_name)

    def value(self, engine_name: str, value: Any) -> Any:
        convert = self.convert.get(engine_name)
        return value if convert is None or value is None else convert(value)


ENGINE_NAMES = Naming()


def shown(value: Any) -> str:
    """A value as messages show it: numbers plainly (0.2, not 0.19999999999999996), booleans
    and null as JSON spells them, text quoted and cut at 80 characters."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, float):  # 12 digits: 1 - 0.8 shows as 0.2; -1.0 stays a float
        text = f"{value:.12g}"
        return text if any(c in text for c in ".enai") else text + ".0"
    if isinstance(value, int):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def escape(text: str) -> str:
    """`text` for use inside a template (braces doubled)."""
    return str(text).replace("{", "{{").replace("}", "}}")


class _Mention:
    def __init__(self, key: str, value: Any, naming: Naming, is_field: bool):
        self.key, self.raw, self.naming, self.is_field = key, value, naming, is_field

    def __format__(self, spec: str) -> str:
        if not self.is_field:
            return format(self.raw, spec)
        name = self.naming.name(self.key)
        value = shown(self.naming.value(self.key, self.raw))
        return {"name": name, "value": value}.get(spec, f"{name}={value}")


class _Mentions(dict):
    def __init__(self, err: UserError, naming: Naming):
        super().__init__()
        self.err, self.naming = err, naming

    def __missing__(self, key: str) -> _Mention:
        err = self.err
        if key == "field":  # the error's own input
            return _Mention(err.field, err.value, self.naming, True)
        if key not in err.values:  # an input named only by name: {mask:name}
            return _Mention(key, None, self.naming, True)
        return _Mention(key, err.values[key], self.naming, key in err._fields)


class UserError(ValueError):
    """An error a user can act on; the message names the input and the fix.

    `values` makes `message` a template (see the module docstring); keys of `values` that are
    not input names (`words`) are plain words substituted as they are.
    """

    def __init__(
        self,
        message: str,
        field: str | None = None,
        value: Any = None,
        *,
        values: Mapping[str, Any] | None = None,
        words: Mapping[str, Any] | None = None,
    ):
        self.message = message
        self.template = message if values is not None or words is not None else None
        self.field = field
        self.value = value
        self.values = {**(values or {}), **(words or {})}
        self._fields = set(values or {})
        super().__init__(self.render())

    def render(self, naming: Naming = ENGINE_NAMES) -> str:
        """The message in `naming`'s spelling."""
        if self.template is None:
            return self.message
        return self.template.format_map(_Mentions(self, naming))

    def api_field(self, naming: Naming = ENGINE_NAMES) -> str | None:
        return None if self.field is None else naming.name(self.field)

    def __str__(self) -> str:
        return self.render()


class InputError(UserError):
    """A request that cannot run as given (the APIs answer 422, or fail the prediction)."""


def field_error(
    template: str, field: str, value: Any, *, words: Mapping[str, Any] | None = None, **others: Any
) -> InputError:
    """An InputError about `field` (`{field}` in `template`) that may mention other inputs
    (`others`, by engine name) and plain `words`."""
    return InputError(template, field, value, values={field: value, **others}, words=words or {})
