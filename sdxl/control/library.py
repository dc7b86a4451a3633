"""The control models a server has: the folders under SDXL_WEIGHTS_DIR/controlnet/ (diffusers'
layout, each with its config.json) and the depth preprocessor's model in annotators/depth/,
read from their configs without loading a tensor, so the APIs can list them and the boundary
can refuse a unit whose model is not here (the message lists those that are).

No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdxl.config import (
    ANNOTATORS_DIR,
    CONTROLNET_DIR,
    UNION_MODEL,
)
from sdxl.errors import InputError
from sdxl.inputs.control_units import ControlUnit

UNION_CLASS = "ControlNetUnionModel"
DEDICATED_CLASS = "ControlNetModel"
DEPTH_DIR = f"{ANNOTATORS_DIR}/depth"
DOWNLOAD_HINT = "`python -m sdxl weights download` fetches canny, depth and the union model"


@dataclass(frozen=True)
class ControlModel:
    """One folder under controlnet/: its name and what its config says."""

    name: str
    union: bool
    control_types: int  # the union model's num_control_type (0 for a dedicated one)
    folder: Path


class ControlLibrary:
    """The control models under `weights_dir` (read again on each call: folders may be added
    while the server runs)."""

    def __init__(self, weights_dir: Path):
        self.root = Path(weights_dir) / CONTROLNET_DIR
        self.depth_folder = Path(weights_dir) / DEPTH_DIR

    def models(self) -> dict[str, ControlModel]:
        """Every usable model, by folder name, sorted."""
        found = {}
        folders = sorted(self.root.iterdir()) if self.root.is_dir() else []
        for folder in folders:
            model = _read(folder)
            if model is not None:
                found[model.name] = model
        return found

    def has_depth(self) -> bool:
        return (self.depth_folder / "config.json").is_file()

    def resolve(self, unit: ControlUnit) -> ControlModel:
        """The model `unit` runs on: the one it names, or its type's (canny: controlnet/canny/,
        else controlnet/canny-small/; union_*: controlnet/union/). InputError names the unit's
        field and lists the models this server has."""
        models = self.models()
        wanted = unit.folder
        candidates = [wanted] if wanted is not None else [unit.type, f"{unit.type}-small"]
        found = next((models[name] for name in candidates if name in models), None)
        if found is None:
            raise _missing(unit, candidates, models)
        if found.union != unit.union:
            kind = "the union model's types (union_*)" if found.union else "a dedicated type"
            raise InputError(
                f"{unit.field('model')}={found.name} is a "
                f"{'union' if found.union else 'dedicated'} ControlNet, which takes {kind}, "
                f"not {unit.type}; choose a model for {unit.type}",
                unit.field("model"),
            )
        mode = unit.control_mode
        if mode is not None and mode >= found.control_types:
            raise InputError(
                f"{unit.field('type')}={unit.type}: the union model {found.name} has only "
                f"{found.control_types} control types; use xinsir's promax union model "
                f"({DOWNLOAD_HINT})",
                unit.field("type"),
            )
        return found

    def check(self, units: tuple[ControlUnit, ...]) -> None:
        """Every unit's model and preprocessor is on this server (InputError otherwise)."""
        for unit in units:
            self.resolve(unit)
            self.check_preprocessor(unit)

    def check_preprocessor(self, unit: ControlUnit) -> None:
        """The unit's preprocessor can run here (the depth model is on this server)."""
        if unit.map_maker == "depth" and not self.has_depth():
            raise InputError(
                f"{unit.field('preprocessor')}=depth: this server has no depth model "
                f"(SDXL_WEIGHTS_DIR/{DEPTH_DIR}); send a ready depth map with the "
                f"preprocessor none, or ask the operator to run {DOWNLOAD_HINT}",
                unit.field("preprocessor"),
            )


def _read(folder: Path) -> ControlModel | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    union = config.get("_class_name") == UNION_CLASS or folder.name == UNION_MODEL
    types = int(config.get("num_control_type", 0)) if union else 0
    return ControlModel(folder.name, union, types, folder)


def _missing(unit: ControlUnit, candidates: list[str], models: dict) -> InputError:
    where = " or ".join(f"controlnet/{name}/" for name in candidates)
    have = ", ".join(models) or "none"
    return InputError(
        f"{unit.field('type')}={unit.type}: this server has no such ControlNet "
        f"(SDXL_WEIGHTS_DIR/{where}); it has: {have}. Choose one of those, or ask the "
        f"operator to run {DOWNLOAD_HINT}",
        unit.field("model") if unit.model is not None else unit.field("type"),
    )
