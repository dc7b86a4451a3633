"""Control models on the device: loaded on first use, kept resident (at most `max_resident`,
least recently used out), in the engine's dtype, with the fast path the base UNet has
(channels-last, fused QKV). Used only on the GPU thread, under the engine's lock; a request
never changes a model (the pipelines read them), so the next request cannot tell.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from sdxl.control.library import ControlLibrary, ControlModel
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
        self.max_resident = max_resident
        self.channels_last, self.fuse_qkv = channels_last, fuse_qkv
        self._loaded: OrderedDict[str, Any] = OrderedDict()  # name -> module, oldest first

    @property
    def names(self) -> list[str]:
        """The resident models, least recently used first."""
        return list(self._loaded)

    def for_units(self, units: tuple[ControlUnit, ...]) -> list[Any]:
        """One module per unit (the union model once for all its units), loaded if need be."""
        wanted = [self.library.resolve(unit) for unit in units]
        if units and units[0].union:
            wanted = wanted[:1]
        # Resident while this job runs, however small the bound: the job needs them all.
        keep = max(self.max_resident, len({model.name for model in wanted}))
        modules = [self._get(model, keep) for model in wanted]
        return modules

    def _get(self, model: ControlModel, keep: int) -> Any:
        module = self._loaded.pop(model.name, None)
        if module is None:
            module = self._load(model)
        self._loaded[model.name] = module
        while len(self._loaded) > keep:
            evicted, _ = self._loaded.popitem(last=False)
            log.info("control model %s left the device (least recently used)", evicted)
        return module

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
        while len(self._loaded) > self.max_resident:
            self._loaded.popitem(last=False)
