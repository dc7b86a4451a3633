"""Modules kept on the device by name, least recently used out beyond a bound: the control
models (`sdxl.control.resident`) and the IP-Adapters' parts (`sdxl.control.ip_adapter`)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Resident:
    def __init__(self, what: str, bound: int):
        self.what = what  # for the log: "control model", "IP-Adapter"
        self.bound = bound
        self._held: OrderedDict[str, Any] = OrderedDict()  # name -> module, oldest first

    @property
    def names(self) -> list[str]:
        """The resident names, least recently used first."""
        return list(self._held)

    def get(self, name: str, load: Callable[[], Any] | None, keep: int | None = None) -> Any:
        """`name`'s module, loaded by `load()` if it is not held (None: it is); at most `keep`
        (the bound by default) stay, the least recently used leaving first."""
        module = self._held.pop(name, None)
        if module is None:
            if load is None:
                raise KeyError(f"{self.what} {name} is not resident")
            module = load()
        self._held[name] = module
        self.trim(self.bound if keep is None else keep)
        return module

    def trim(self, keep: int | None = None) -> None:
        """Down to `keep` (the bound by default)."""
        keep = self.bound if keep is None else keep
        while len(self._held) > keep:
            evicted, _ = self._held.popitem(last=False)
            log.info("%s %s left the device (least recently used)", self.what, evicted)
