"""The files backend: the bytes of outputs, uploads, url images, checkpoints and trained weights,
in a folder every replica mounts (SDXL_FILES_DIR; a ReadWriteMany volume on Kubernetes), named by
keys the database rows hold. Our own few lines rather than a library: a folder, atomic
renames and a marker file are all it takes.

Writes are atomic (a temporary file renamed into place), so a reader never sees half a file,
and a crash leaves at most a temporary file, swept later. The folder carries a marker naming
its database (`.store-id`): a replica pointed at another folder than the database's files
refuses to start instead of serving outputs that are not there.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from sdxl.store.errors import StoreDiskFull, StoreUnavailable

log = logging.getLogger("sdxl.store")

MARKER = ".store-id"
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")  # no dot first
TEMP_PREFIX = ".partial-"


class FilesError(RuntimeError):
    """The files folder cannot be used with this database; the message says what to set."""


class Blobs:
    def __init__(self, root: Path):
        self.root = Path(root)

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- the folder's identity -------------------------------------------------------------
    def marker(self) -> str | None:
        path = self.root / MARKER
        return path.read_text().strip() if path.is_file() else None

    def mark(self, store_id: str) -> None:
        self._write(self.root / MARKER, store_id.encode())

    # ---- bytes by key -----------------------------------------------------------------------
    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key) or ".." in key.split("/"):
            raise ValueError(f"not a files key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> int:
        """Store `data` under `key` (replacing what was there); its size."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, data)
        return len(data)

    def put_file(self, key: str, source: Path) -> int:
        """Store a copy of the file `source` under `key` (trained weights and checkpoints,
        too large to hold in memory twice); its size."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)

        def copy(out) -> None:
            with open(source, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)

        self._write(path, copy)
        return path.stat().st_size

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the bytes `chunks` yield under `key`, one chunk in memory at a time (uploads);
        its size. An exception from `chunks` leaves nothing under `key`."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(out) -> None:
            for chunk in chunks:
                out.write(chunk)

        self._write(path, write)
        return path.stat().st_size

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, keys: Iterable[str | None]) -> None:
        for key in keys:
            if key:
                self.path(key).unlink(missing_ok=True)

    def sweep(self, known: set[str], older_than_s: float) -> int:
        """Remove what no row names (a crash between writing a file and its row, or between
        removing a row and its file) once it is older than `older_than_s`; how many."""
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name == MARKER:
                continue
            key = path.relative_to(self.root).as_posix()
            if key not in known and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _write(self, path: Path, data) -> None:
        """`data`: bytes, or a function that writes them to the open file."""
        temp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
        try:
            with open(temp, "wb") as out:
                if callable(data):
                    data(out)
                else:
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except OSError as err:  # as the database's errors: a plain message, the cause logged
            temp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreDiskFull(f"{self.root}: {err.strerror}") from err
            raise StoreUnavailable(f"{self.root}: {err.strerror}") from err
        except BaseException:  # `data` gave up (an upload over its share): no partial file
            temp.unlink(missing_ok=True)
            raise
