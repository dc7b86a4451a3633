"""Control models on the device: loaded on first use, kept resident (at most `max_resident`,
least recently used out), in the engine's dtype, with the fast path the base UNet has
(channels-last, fused QKV). Used only on the GPU thread, under the engine's lock; a request
never changes a model (the pipelines read them), so the next request cannot tell.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch

from sdxl.control.library import ControlLibrary, ControlModel
from sdxl.control.lru import Resident
from sdxl.inputs.control_units import ControlUnit
from sdxl.model import fast

log = logging.getLogger(__name__)


class ResidentControls:
    def __init__(
        self,
        library: ControlLibrary,
        device: torch.device,
        dtype: torch.dtype,
        max_resident: int,
        channels_last: bool = False,
        fuse_qkv: bool = False,
    ):
        self.library = library
        self.device, self.dtype = device, dtype
        self.channels_last, self.fuse_qkv = channels_last, fuse_qkv
        self._resident = Resident("control model", max_resident)

    @property
    def names(self) -> list[str]:
        """The resident models, least recently used first."""
        return self._resident.names

    def for_units(self, units: tuple[ControlUnit, ...]) -> list[Any]:
        """One module per unit (the union model once for all its units), loaded if need be; a
        unit whose model is resident is served without reading the weights folder."""
        if units and units[0].union:
            units = units[:1]
        names = {unit.folder for unit in units}
        # Resident while this job runs, however small the bound: the job needs them all.
        keep = max(self._resident.bound, len(names))
        return [self._get(unit, keep) for unit in units]

    def _get(self, unit: ControlUnit, keep: int) -> Any:
        name, load = unit.folder, None
        if name not in self._resident.names:  # the folder's config is read only to load it
            model = self.library.resolve(unit)
            name, load = model.name, partial(self._load, model)
        return self._resident.get(name, load, keep)

    def _load(self, model: ControlModel) -> Any:
        from diffusers import ControlNetModel, ControlNetUnionModel

        cls = ControlNetUnionModel if model.union else ControlNetModel
        module = cls.from_pretrained(model.folder, dtype=self.dtype, use_safetensors=True)
        module.to(self.device).requires_grad_(False).eval()
        if self.channels_last:
            fast.to_channels_last(module)
        if self.fuse_qkv:
            fast.fuse_qkv(module)
        log.info("loaded control model %s (%s) on %s", model.name, cls.__name__, self.device)
        return module

    def trim(self) -> None:
        """Down to the bound (after a job that needed more)."""
        self._resident.trim()
