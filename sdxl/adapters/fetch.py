"""Fetch user-supplied files (trained weights, LoRAs) into a bounded on-disk cache.

Every URL and every byte is hostile: only http(s) URLs, a bounded number of redirects (never
to another scheme, never from https down to http), connect and read timeouts plus a total
deadline, a per-file size limit enforced while streaming, and a total cache size kept by
evicting the least recently used entries. A download goes to a temporary file that is moved
into place with `os.replace` only once complete and checked against Content-Length, so the
cache never holds a partial file. Each entry has a JSON record beside it (size, sha256,
mtime, last use); an entry whose file no longer matches its record is fetched again.

A local path is read where `settings.local_files` allows it: only files inside the folders
named in SDXL_LOCAL_WEIGHTS_DIRS (and the Cog predictor's own staging folder), so that a
request cannot make the server read one of its own files. The boundary checked the same rule
when the request came (`sdxl.inputs.weights_source`, which also makes a file:// URL a path);
this check holds for requests made again from the store. Query strings (which often carry
signatures) never appear in messages, logs or records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sdxl.errors import InputError
from sdxl.inputs.weights_source import HTTP_WAYS
from sdxl.net import http_get
from sdxl.net.urls import redact
from sdxl.settings import FetchSettings

log = logging.getLogger(__name__)

_STALE_TMP_S = 3600.0
_MAX_URL = 4096


class FetchError(InputError):
    """A file named in a request could not be fetched or used; the message says why."""


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


@dataclass
class _Entry:
    key: str
    data: Path
    record: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.record.get("size", 0))

    @property
    def last_used(self) -> float:
        return float(self.record.get("last_used", 0.0))


class DownloadCache:
    """`fetch(source, input_name)` -> a local file path; see the module docstring."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self.folder = self.settings.cache_dir / "fetch"

    # ---- public -------------------------------------------------------------------------
    def fetch(self, source: str, input_name: str, check: Callable[[], None] | None = None) -> Path:
        """A local file holding `source` (an http(s) URL or an allowed local path: the
        boundary made a file:// URL a path). `check` is called while downloading and may raise
        to stop (a cancelled job)."""
        if not isinstance(source, str) or not source.strip():
            raise FetchError(f"{input_name} must be an http(s) URL")
        source = source.strip()
        if len(source) > _MAX_URL:
            raise FetchError(
                f"{input_name} is {len(source)} characters long; the limit is {_MAX_URL}"
            )
        try:
            scheme = urlsplit(source).scheme.lower()
        except ValueError as err:
            raise FetchError(f"{input_name} is not a valid URL ({err})") from err
        if scheme == "":
            return self._local(source, input_name)
        if scheme not in ("http", "https"):
            raise FetchError(
                f"{input_name}: {scheme}:// URLs are not supported; give an http(s) URL"
            )
        return self._cached(source, input_name, check)

    def digest(self, path: Path) -> str | None:
        """The sha256 recorded when `path` (a file this cache returned) was downloaded."""
        if path.parent != self.folder or path.suffix != ".data":
            return None
        entry = self._entry(path.stem)
        return None if entry is None else entry.record.get("sha256")

    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries())

    def path_for(self, url: str) -> Path:
        return self.folder / f"{cache_key(url)}.data"

    # ---- local files --------------------------------------------------------------------
    def _local(self, source: str, input_name: str) -> Path:
        local = self.settings.local_files
        if not local.dirs:
            raise FetchError(
                f"{input_name}: local paths are not accepted here ({source[:80]}); {HTTP_WAYS} "
                "(the server's operator can allow a folder with SDXL_LOCAL_WEIGHTS_DIRS)"
            )
        if not local.allows(source):
            raise FetchError(
                f"{input_name}: {source[:80]} is outside the folders allowed for local weights "
                f"(SDXL_LOCAL_WEIGHTS_DIRS); {HTTP_WAYS}"
            )
        real = Path(os.path.realpath(source))
        if not real.is_file():
            raise FetchError(f"{input_name}: {source} is not a regular file")
        size = real.stat().st_size
        if size > self.settings.max_file_bytes:
            raise FetchError(
                f"{input_name}: {source} is {size} bytes; the limit is "
                f"{self.settings.max_file_bytes}"
            )
        return real

    # ---- the cache ----------------------------------------------------------------------
    def _cached(self, url: str, input_name: str, check: Callable[[], None] | None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = cache_key(url)
        entry = self._entry(key)
        if entry is not None and self._vouched(entry):
            entry.record["last_used"] = time.time()
            self._write_record(entry)
            log.info("%s: cache hit for %s", input_name, redact(url))
            return entry.data
        if entry is not None:
            self._remove(entry)
        started = time.monotonic()
        path = self._download(url, key, input_name, check)
        log.info(
            "%s: fetched %s (%d bytes) in %.1f s",
            input_name,
            redact(url),
            path.stat().st_size,
            time.monotonic() - started,
        )
        self._evict(keep=key, need=0)
        return path

    def _entries(self) -> list[_Entry]:
        if not self.folder.is_dir():
            return []
        found = []
        for rec in self.folder.glob("*.json"):
            entry = self._entry(rec.stem)
            if entry is not None:
                found.append(entry)
        return found

    def _entry(self, key: str) -> _Entry | None:
        rec = self.folder / f"{key}.json"
        try:
            record = json.loads(rec.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        return _Entry(key, self.folder / f"{key}.data", record)

    @staticmethod
    def _vouched(entry: _Entry) -> bool:
        try:
            st = entry.data.stat()
        except OSError:
            return False
        r = entry.record
        return st.st_size == r.get("size") and st.st_mtime_ns == r.get("mtime_ns")

    def _write_record(self, entry: _Entry) -> None:
        rec = self.folder / f"{entry.key}.json"
        tmp = rec.with_name(f".{rec.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry.record, sort_keys=True))
        os.replace(tmp, rec)

    def _remove(self, entry: _Entry) -> None:
        # The record goes first: a data file without a record is never used.
        (self.folder / f"{entry.key}.json").unlink(missing_ok=True)
        entry.data.unlink(missing_ok=True)

    def _evict(self, keep: str, need: int) -> None:
        """Drop least recently used entries until the cache plus `need` bytes fits."""
        self._sweep_tmp()
        entries = sorted(self._entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        for entry in entries:
            if total + need <= self.settings.max_total_bytes:
                break
            if entry.key == keep:
                continue
            log.info("download cache: evicting %s (%d bytes)", entry.record.get("url"), entry.size)
            self._remove(entry)
            total -= entry.size
        # Data files without a record (a crash between the two writes) take space too.
        for data in self.folder.glob("*.data"):
            if not (self.folder / f"{data.stem}.json").exists() and data.stem != keep:
                data.unlink(missing_ok=True)

    def _sweep_tmp(self) -> None:
        now = time.time()
        for tmp in self.folder.glob(".dl-*"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass

    # ---- HTTP ---------------------------------------------------------------------------
    def _download(
        self, url: str, key: str, input_name: str, check: Callable[[], None] | None
    ) -> Path:
        s = self.settings
        limit = min(s.max_file_bytes, s.max_total_bytes)
        shown = redact(url)

        def fail(why: str) -> FetchError:
            return FetchError(f"{input_name}: could not fetch {shown}: {why}")

        lim = http_get.Limits.of(s, check)
        conn, response, final = http_get.open_url(url, lim, fail)
        try:
            expected = http_get.content_length(response)
            if expected is not None and expected > limit:
                raise fail(f"it is {expected} bytes; the limit is {limit}")
            self._evict(keep=key, need=expected or 0)
            fd, tmp_name = tempfile.mkstemp(prefix=f".dl-{key[:16]}-", dir=self.folder)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    got, sha = http_get.stream(response, out, limit, lim, fail)
                    os.fsync(out.fileno())
                if expected is not None and got != expected:
                    raise fail(f"got {got} bytes of the {expected} announced (truncated)")
                if got == 0:
                    raise fail("the response was empty")
                data = self.folder / f"{key}.data"
                os.replace(tmp, data)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            conn.close()
        st = data.stat()
        now = time.time()
        record = {
            "url": shown,
            "final_url": redact(final),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "fetched": now,
            "last_used": now,
        }
        self._write_record(_Entry(key, data, record))
        return data
