"""The LoRAs a request may name, per tenant: the `.safetensors` files of SDXL_LORA_DIR (every
tenant's), of its `<tenant>/` subfolder (that tenant's only; a name there shadows a shared one),
and `offset`, shipped with the weights. A name is looked up among the files found, never joined
into a path. The folder is read again on each lookup (a file dropped in is found; `refresh`
only forgets the metadata read), and nothing lists a server path.

`check` is the boundary's test of a request's LoRAs (every API's 422, the Cog predictor's
InvalidInputs, before anything is stored or queued); preparation looks the names up again
(`sdxl.adapters.staging`), for stored jobs recovered on another replica. `short_hash` is the
hash A1111 writes in its infotext's `Lora hashes`, remembered per file.

No torch here: the APIs list the LoRAs without the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sdxl.errors import InputError
from sdxl.inputs.request import AdapterSpec

SUFFIX = ".safetensors"
OFFSET = "offset"
MAX_HEADER = 1 << 20  # a header past 1 MiB is not read for its metadata
WHERE_NAMES_COME_FROM = (
    "names are the .safetensors files in SDXL_LORA_DIR (without .safetensors), yours in its "
    "<tenant>/ subfolder, and offset; GET /sdapi/v1/loras lists them"
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # a trainer's output: a trained version, not a LoRA
SHORT_HASH = 12  # hex digits of A1111's LoRA short hash
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path


class LoraLibrary:
    def __init__(self, folder: Path, offset: Path | None = None):
        self.folder = folder
        self.offset = offset
        self._metadata: dict[tuple[str, int, int], dict] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
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
        """The file `name` names; InputError naming what the user wrote when none does."""
        path = self.find(name, tenant)
        if path is None:
            message = f"{written[:120]!r} names no LoRA here; {WHERE_NAMES_COME_FROM}"
            raise InputError(message, field)
        return path

    def check(self, spec: AdapterSpec, tenant: str | None, most: int) -> None:
        """A request's LoRAs as preparation will take them: each name one of `tenant`'s, no
        trainer's tar among the URLs, at most `most` LoRAs; InputError names the item."""
        for ref in spec.loras:
            if not ref.is_url:
                self.path_of(ref.ref, tenant, ref.written, ref.field)
            elif urlsplit(ref.ref).path.lower().endswith(TAR_SUFFIXES):
                raise InputError(
                    f"{ref.field}: {ref.written[:80]!r} is a trainer's tar; it goes in "
                    "replicate_weights (one trained version per request: the tokens <s0><s1> "
                    "of two would collide); loras takes .safetensors LoRAs",
                    ref.field,
                )
        trained = bool(spec.replicate_weights or spec.trained_tar)  # a LoRA, if any is stacked
        count = len(spec.loras) + bool(spec.lora_name) + bool(spec.lora_id) + trained
        if spec.loras and count > most:
            shown = ", ".join(ref.written for ref in spec.loras)[:300]
            if count > len(spec.loras):
                shown += " and replicate_weights / lora_name / lora_id"
            raise InputError(
                f"this request applies {count} LoRAs ({shown}); this server applies at most "
                f"{most} per request (SDXL_MAX_RESIDENT_LORAS); remove some",
                spec.loras[-1].field,
            )

    def short_hash(self, path: Path) -> str:
        """A1111's `Lora hashes` value: the file's `sshs_model_hash` metadata when it is a
        sha256, else the sha256 of the bytes after the safetensors header (A1111's and
        kohya's "addnet" hash, Civitai's AutoV3), its first 12 hex digits; remembered per
        (path, size, mtime), computed once per file."""
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._hashes:
                return self._hashes[key]
        given = str(self.metadata(path).get("sshs_model_hash", "")).lower()
        full = given if len(given) == 64 and set(given) <= _HEX else _tensor_sha256(path)
        with self._lock:
            self._hashes[key] = full[:SHORT_HASH]
        return full[:SHORT_HASH]

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


def _tensor_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + size)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
