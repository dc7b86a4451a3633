"""How an API spells a request: its fields (its names, defaults, bounds and choices where it
has its own), what null means, whether unknown fields are refused. The rules that decide
whether a request is valid read this description; they are all in `sdxl.inputs.rules`. How
its clients write values on the wire (numbers as strings, form text) is the API layer's
(`sdxl.http.wire`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sdxl.config import INPUTS, OUTPUT_INPUTS, InputSpec
from sdxl.errors import ENGINE_NAMES, InputError, Naming, UserError
from sdxl.inputs.request import SERVER_FIELDS, Request

UNSET: Any = object()  # a Field default meaning "the engine's own default"
REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(Request)) - SERVER_FIELDS


@dataclass(frozen=True)
class Field:
    """One field of an API's request: its name there and the engine input it sets."""

    name: str  # as the API spells it
    input: str | None  # the engine input it sets; None: read by the surface's `assemble`
    kind: str | None = None  # None: the input's kind (sdxl.config.INPUTS)
    default: Any = UNSET  # in the API's units; UNSET: the engine's default
    required: bool = False
    nullable: bool = False  # null is a value (the engine's None); else see Surface.null_is_unset
    ge: float | None = None  # the API's own bounds, in its units (None: the input's)
    le: float | None = None
    choices: Mapping[str, Any] | None = None  # the API's values -> the engine's (None: input's)
    to_input: Callable[[Any], Any] | None = None  # the API's value -> the engine's
    from_input: Callable[[Any], Any] | None = None  # the engine's value -> the API's (messages)
    image_forms: tuple[str, ...] = ("data", "url")  # kind image: data URI, base64, http(s) URL
    mask: str = "white"  # kind image, a mask: which pixels repaint (images.inputs.MASK_CONVENTIONS)
    description: str = ""

    @property
    def spec(self) -> InputSpec | None:
        return INPUTS.get(self.input) if self.input else None

    @property
    def value_kind(self) -> str:
        return self.kind or self.spec.kind

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        spec = self.spec
        if self.ge is not None or self.le is not None or spec is None:
            return self.ge, self.le
        return spec.ge, spec.le

    @property
    def choice_map(self) -> Mapping[str, Any] | None:
        if self.choices is not None:
            return self.choices
        spec = self.spec
        return None if spec is None or spec.choices is None else {c: c for c in spec.choices}


@dataclass(frozen=True)
class Surface:
    """How one API spells a request: its fields, and how it sends values."""

    fields: tuple[Field, ...]
    ignore_unknown: bool = False  # fields it does not know are ignored (AUTOMATIC1111's way)
    null_is_unset: bool = True  # null on a field that is not nullable: as if not given
    fixed: Mapping[str, Any] = field(default_factory=dict)  # engine values it always sets
    # Its values (by its names) -> engine values, for fields that set no input one to one.
    assemble: Callable[[dict, set], dict] | None = None
    # Engine inputs that `assemble` sets from one of its fields: errors about them name it.
    part_of: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"fields declared twice: {', '.join(twice)}")

    @cached_property
    def by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @cached_property
    def naming(self) -> Naming:
        names = {f.input: f.name for f in self.fields if f.input and f.input != f.name}
        convert = {f.input: f.from_input for f in self.fields if f.input and f.from_input}
        return Naming(names, convert) if names or convert else ENGINE_NAMES

    def problem(self, err: UserError) -> Problem:
        """An engine error in this API's names."""
        message = err.render(self.naming)
        whole = self.part_of.get(err.field)
        if whole is not None:
            return Problem(whole, f"{whole}: {message}")
        return Problem(err.api_field(self.naming), message)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, in the API's names."""

    field: str | None
    message: str


class InvalidInputs(InputError):
    """Every problem found at the boundary (the first one is the message)."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems), problems[0].field)
        self.problems = problems


@dataclass(frozen=True)
class Checked:
    """A request that passed the boundary."""

    values: dict[str, Any]  # in the engine's names; images as ImageSource
    given: dict[str, Any]  # as sent, in the API's names: numbers parsed, nulls dropped

    def request(self) -> Request:
        return Request(**{k: v for k, v in self.values.items() if k in REQUEST_FIELDS})

    def output(self, name: str) -> Any:
        """output_format or output_quality: what the image-out step needs."""
        assert name in OUTPUT_INPUTS
        return self.values.get(name, INPUTS[name].default)
