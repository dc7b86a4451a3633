"""The LoRAs a request may name, per tenant: the `.safetensors` files of SDXL_LORA_DIR (every
tenant's), of its `<tenant>/` subfolder (that tenant's only; a name there shadows a shared one),
and `offset`, shipped with the weights. A name is looked up among the files found, never joined
into a path. The folder is read again on each lookup (a file dropped in is found; `refresh`
only forgets the metadata read), and nothing lists a server path.

No torch here: the APIs list the LoRAs without the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from sdxl.adapters.lora import LoraError

SUFFIX = ".safetensors"
OFFSET = "offset"
MAX_HEADER = 1 << 20  # a header past 1 MiB is not read for its metadata
WHERE_NAMES_COME_FROM = (
    "names are the .safetensors files in SDXL_LORA_DIR (without .safetensors), yours in its "
    "<tenant>/ subfolder, and offset; GET /sdapi/v1/loras lists them"
)


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path


class LoraLibrary:
    def __init__(self, folder: Path, offset: Path | None = None):
        self.folder = folder
        self.offset = offset
        self._metadata: dict[tuple[str, int, int], dict] = {}
        self._lock = threading.Lock()

    def files(self, tenant: str | None) -> dict[str, LoraFile]:
        """name -> file, for `tenant` (None: the shared ones only, as on Cog)."""
        found = _scan(self.folder)
        if tenant and _is_folder_name(tenant):
            found.update(_scan(self.folder / tenant))
        if self.offset is not None and self.offset.is_file():
            found[OFFSET] = LoraFile(OFFSET, self.offset)
        return found

    def find(self, name: str, tenant: str | None) -> Path | None:
        found = self.files(tenant)
        if name in found:
            return found[name].path
        aliases = [f for f in found.values() if self._alias(f) == name]
        return aliases[0].path if len(aliases) == 1 else None

    def path_of(self, name: str, tenant: str | None, written: str, field: str) -> Path:
        """The file `name` names; LoraError naming what the user wrote when none does."""
        path = self.find(name, tenant)
        if path is None:
            raise LoraError(f"{written[:120]!r} names no LoRA here; {WHERE_NAMES_COME_FROM}", field)
        return path

    def listing(self, tenant: str | None) -> list[dict]:
        """A1111's /sdapi/v1/loras: name, alias, a virtual path, the file's metadata."""
        rows = []
        for name, file in sorted(self.files(tenant).items()):
            metadata = self.metadata(file.path)
            rows.append(
                {
                    "name": name,
                    "alias": str(metadata.get("ss_output_name") or name),
                    "path": f"models/Lora/{name}{SUFFIX}",
                    "metadata": metadata,
                }
            )
        return rows

    def refresh(self) -> None:
        with self._lock:
            self._metadata.clear()

    def _alias(self, file: LoraFile) -> str:
        return str(self.metadata(file.path).get("ss_output_name") or file.name)

    def metadata(self, path: Path) -> dict:
        """The safetensors header's __metadata__ (JSON-looking values parsed, as A1111 does)."""
        try:
            st = path.stat()
        except OSError:
            return {}
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._metadata:
                return self._metadata[key]
        found = _read_metadata(path)
        with self._lock:
            self._metadata[key] = found
        return found


def _scan(folder: Path) -> dict[str, LoraFile]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    found = {}
    for entry in entries:
        if entry.name.endswith(SUFFIX) and entry.is_file():
            name = entry.name[: -len(SUFFIX)]
            found[name] = LoraFile(name, Path(entry.path))
    return found


def _is_folder_name(tenant: str) -> bool:
    return tenant not in (".", "..") and not (set(tenant) & set("/\\\0"))


def _read_metadata(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    raw = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[str(key)] = value
    return out
