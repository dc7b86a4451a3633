"""ControlNet units: what one request asks of up to three ControlNets, and the rules they follow.

A `ControlUnit` is the engine's: a control type (a dedicated ControlNet, or one of the union
model's types), its image, how the image becomes a control map, and how strongly and when the
map steers the denoising. The Replicate inputs spell units as flat fields (`controlnet_1`,
`controlnet_1_image`, ...; `with_controls` reads them); AUTOMATIC1111's ControlNet extension
spells them as `alwayson_scripts.controlnet.args` (its surface builds units itself). Either
way `check_units` says whether they can run, naming each API's own field.

No torch here: the APIs build units before the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdxl.config import (
    CONTROL_ALIASES,
    INPUTS,
    MAX_CONTROL_UNITS,
    TYPE_PREPROCESSORS,
    UNION_MODEL,
    UNION_MODES,
)
from sdxl.errors import InputError

if TYPE_CHECKING:
    from sdxl.images.inputs import ImageSource

UNIT_COUNT = 3  # controlnet_1 .. controlnet_3 (the Replicate inputs)
# A unit's attributes -> the suffix of its Replicate input (controlnet_1 + suffix).
FLAT_SUFFIXES = {
    "type": "",
    "image": "_image",
    "preprocessor": "_preprocessor",
    "conditioning_scale": "_conditioning_scale",
    "start": "_start",
    "end": "_end",
}
THRESHOLD_INPUTS = {
    "low_threshold": "canny_low_threshold",
    "high_threshold": "canny_high_threshold",
}


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet of a request, as the engine runs it."""

    type: str  # a dedicated type (canny, depth) or union_<mode> (sdxl.config.CONTROL_TYPES)
    image: Image.Image | ImageSource | None  # the control image (a map when preprocessor none)
    preprocessor: str | None = None  # canny, depth, none; None: the type's own
    conditioning_scale: float = 0.75  # the ControlNet's residuals are scaled by this
    start: float = 0.0  # fractions of the steps between which it applies
    end: float = 1.0
    low_threshold: int = 100  # Canny's hysteresis thresholds
    high_threshold: int = 200
    resize_mode: str = "resize"  # how the image meets the output size (CONTROL_RESIZE_MODES)
    processor_res: int | None = None  # the preprocessor's resolution (short side); None: output's
    model: str | None = None  # a folder under controlnet/; None: the type's own
    # The unit's attributes in the API's names (attribute -> field), for messages.
    names: tuple[tuple[str, str], ...] = ()

    def field(self, attribute: str) -> str:
        """This unit's `attribute` as its API names it."""
        return dict(self.names).get(attribute, attribute)

    @property
    def union(self) -> bool:
        return self.type.startswith("union_")

    @property
    def control_mode(self) -> int | None:
        """The union model's index of this type (None for a dedicated ControlNet)."""
        return UNION_MODES[self.type.removeprefix("union_")] if self.union else None

    @property
    def map_maker(self) -> str:
        """What makes the control map: the given preprocessor, else the type's own."""
        if self.preprocessor is not None:
            return self.preprocessor
        return TYPE_PREPROCESSORS.get(self.type, "none")

    @property
    def folder(self) -> str | None:
        """The model's folder under controlnet/ when named (a dedicated type falls back to its
        -small variant, `sdxl.control.resident`)."""
        if self.model is not None:
            return self.model
        return UNION_MODEL if self.union else None

    def shown(self) -> dict[str, Any]:
        """What logs and image metadata say about it: no image data."""
        return {
            "type": self.type,
            "preprocessor": self.map_maker,
            "conditioning_scale": self.conditioning_scale,
            "start": self.start,
            "end": self.end,
            **({"model": self.model} if self.model is not None else {}),
        }


# ---- the Replicate inputs -------------------------------------------------------------------
def flat_inputs(number: int) -> dict[str, str]:
    """Unit `number`'s attributes -> its Replicate inputs (controlnet_<number>...)."""
    stem = f"controlnet_{number}"
    names = {attr: stem + suffix for attr, suffix in FLAT_SUFFIXES.items()}
    return {**names, **THRESHOLD_INPUTS}


FLAT_INPUTS = frozenset(
    name for number in range(1, UNIT_COUNT + 1) for name in flat_inputs(number).values()
)


def with_controls(values: Mapping[str, Any]) -> dict[str, Any]:
    """Engine values with the flat controlnet_N inputs read into `controls` (a tuple of
    units) and taken out; InputError names the input at fault. Values that carry `controls`
    already (another API's units) keep them."""
    out = {k: v for k, v in values.items() if k not in FLAT_INPUTS}
    if "controls" in values:
        return out
    units = []
    for number in range(1, UNIT_COUNT + 1):
        unit = _flat_unit(values, number)
        if unit is not None:
            units.append(unit)
    out["controls"] = tuple(units)
    return out


def _flat_unit(values: Mapping[str, Any], number: int) -> ControlUnit | None:
    names = flat_inputs(number)
    given = {attr: _value(values, name) for attr, name in names.items()}
    kind = CONTROL_ALIASES.get(given["type"], given["type"])
    if kind == "none":
        for attr in ("image", "preprocessor"):
            if given[attr] is not None:
                raise InputError(
                    "{" + names[attr] + ":name} was given but {" + names["type"] + ":name} is "
                    "none; choose a control type for it, or drop it",
                    names[attr],
                    values={},
                )
        return None
    return ControlUnit(**{**given, "type": kind}, names=tuple(names.items()))


def _value(values: Mapping[str, Any], name: str) -> Any:
    return values.get(name, INPUTS[name].default)


# ---- the rules every API's units follow -----------------------------------------------------
def check_units(
    units: tuple[ControlUnit, ...],
    *,
    mode: str,
    refine: str,
    cache_interval: int,
) -> None:
    """Raise InputError for the first rule `units` break: at most three, each with an image
    and a start before its end, the union model's types with no preprocessor here given a
    ready map, dedicated and union units not mixed, a union type once; and the features the
    ControlNet pipelines cannot run with them."""
    if not units:
        return
    if len(units) > MAX_CONTROL_UNITS:
        raise InputError(
            f"{len(units)} ControlNet units are enabled; at most {MAX_CONTROL_UNITS} can run "
            "at once: disable the others",
            units[MAX_CONTROL_UNITS].field("type"),
        )
    for unit in units:
        _check_unit(unit)
    _check_kinds(units)
    _check_features(units[0], mode, refine, cache_interval)


def _check_unit(unit: ControlUnit) -> None:
    image, start, end = unit.field("image"), unit.field("start"), unit.field("end")
    if unit.image is None:
        raise InputError(f"{image} is missing: a {unit.type} control needs a control image", image)
    if unit.start >= unit.end:
        raise InputError(
            f"{start}={unit.start:g} is not before {end}={unit.end:g}; the control applies "
            "between them, so start must be lower than end",
            start,
        )
    if unit.map_maker == "canny" and unit.low_threshold > unit.high_threshold:
        low = unit.field("low_threshold")
        raise InputError(
            f"{low}={unit.low_threshold} is above the high threshold {unit.high_threshold}; "
            "Canny needs low <= high",
            low,
        )
    if unit.map_maker == "none" and unit.preprocessor is None:
        preprocessor = unit.field("preprocessor")
        raise InputError(
            f"{unit.field('type')}={unit.type}: this server has no preprocessor for it; send a "
            f"ready control map as {image} and set {preprocessor} to none",
            unit.field("type"),
        )


def _check_kinds(units: tuple[ControlUnit, ...]) -> None:
    union = [unit for unit in units if unit.union]
    if union and len(union) < len(units):
        dedicated = next(unit for unit in units if not unit.union)
        raise InputError(
            f"{dedicated.field('type')}={dedicated.type} and {union[0].field('type')}="
            f"{union[0].type}: a request uses either dedicated ControlNets or the union model's "
            "types, not both (diffusers cannot mix them); use union_"
            f"{dedicated.type} for the first, or a dedicated model for the second",
            dedicated.field("type"),
        )
    seen: dict[str, ControlUnit] = {}
    for unit in union:
        if unit.type in seen:
            raise InputError(
                f"{unit.field('type')}={unit.type} repeats {seen[unit.type].field('type')}; the "
                "union model takes each of its types once: combine them into one unit",
                unit.field("type"),
            )
        seen[unit.type] = unit


def _check_features(unit: ControlUnit, mode: str, refine: str, cache_interval: int) -> None:
    """What diffusers' ControlNet pipelines (and this server's helpers) cannot do."""
    control = unit.field("type")
    if refine == "expert_ensemble_refiner" and mode == "img2img":
        raise InputError(
            "{refine} with a ControlNet on an image: diffusers' ControlNet img2img pipeline has "
            "no denoising_end, which the ensemble of experts needs; use base_image_refiner or "
            f"no_refiner, or drop {control}",
            "refine",
            refine,
            values={"refine": refine},
        )
    if cache_interval > 1:
        raise InputError(
            "{cache_interval} with a ControlNet: DeepCache's cached features would skip the "
            f"ControlNet's residuals; set cache_interval to 1, or drop {control}",
            "cache_interval",
            cache_interval,
            values={"cache_interval": cache_interval},
        )
