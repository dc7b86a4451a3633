"""A training archive's members from a tar: plain, gzip, bzip2 or xz (`sdxl.train.members` has
the rules they share).

The tar is decompressed here, by its magic bytes, and `tarfile` reads it through `_Counted`:
every byte it reads or skips (its headers, a skipped member's data) is counted against the
budget in reads of at most a MiB, with the cancel check after each, and a read larger than what
is left (a pax header that declares gigabytes) is refused before it is made. A member's declared
size is checked against the budget before its data is read or skipped.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from collections.abc import Iterator
from pathlib import Path

from sdxl.train.members import (
    CHUNK,
    DAMAGE,
    SEND,
    ArchiveError,
    Budget,
    Member,
    checked_name,
    clutter,
    damage_named,
    read_all,
    shown,
    too_large,
)

COMPRESSIONS = {b"\x1f\x8b": gzip.GzipFile, b"BZh": bz2.BZ2File, b"\xfd7zXZ\x00": lzma.LZMAFile}
UNREADABLE = {  # magic bytes -> what this server cannot read
    b"\x28\xb5\x2f\xfd": "a zstd-compressed file",
    b"\x04\x22\x4d\x18": "an lz4-compressed file",
    b"\x1f\x9d": "a compress (.Z) file",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive",
    b"Rar!\x1a\x07": "a RAR archive",
}


def unreadable(head: bytes) -> str | None:
    """What the file is, when it starts as a format this server cannot read."""
    return next((what for magic, what in UNREADABLE.items() if head.startswith(magic)), None)


def compressed(head: bytes) -> bool:
    return any(head.startswith(magic) for magic in COMPRESSIONS)


class _Counted:
    """The decompressed tar for `tarfile`, forward only: every byte it reads or skips is
    spent from the budget in reads of at most CHUNK, in the name of `label`."""

    def __init__(self, raw, budget: Budget):
        self.raw, self.budget = raw, budget
        self.position = 0
        self.label = "its first header"

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.budget.limit + 1
        elif size > CHUNK and self.budget.used + size > self.budget.limit:
            raise self.budget.over(self.label, size)
        parts = []
        while size > 0 and (data := self.raw.read(min(size, CHUNK))):
            self.position += len(data)
            size -= len(data)
            parts.append(data)
            self.budget.spend(self.label, len(data))
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset < self.position:
            raise ArchiveError(f"the tar goes back before {self.label}; refused")
        while self.position < offset and self.read(min(offset - self.position, CHUNK)):
            pass
        return self.position

    def tell(self) -> int:
        return self.position


def tar_members(path: Path, budget: Budget) -> Iterator[Member]:
    """Each file of the tar at `path`, in the archive's order (directories left out)."""
    raw = _decompressed(path)
    stream = _Counted(raw, budget)
    try:
        with _opened_tar(stream) as archive:
            where, unread = "its first header", None
            while True:
                if unread is not None:  # the last member's data, unless it was read whole
                    label, end = unread
                    with damage_named(f"member {label}"):
                        if stream.position < end and stream.seek(end) < end:
                            raise EOFError
                with damage_named(where):
                    member = archive.next()
                if member is None:
                    with damage_named("the archive, at its end,"):
                        while stream.read(CHUNK):  # to the compression's own check (CRC)
                            pass
                    return
                budget.count(member.name)
                name = checked_name(member.name, _tar_kind(member))
                stream.label = label = shown(name or member.name)
                where, unread = f"the header after {label}", None
                if member.isreg():
                    budget.expect(label, member.size)  # its bytes are read or skipped
                    unread = (label, member.offset_data + member.size)
                if name is None and not member.isdir():
                    yield clutter(member.name)
                elif name is not None and not member.isdir():
                    yield Member(
                        name, False, _tar_reader(archive, member, name, budget), lambda: None
                    )
    finally:
        raw.close()


def _opened_tar(stream: _Counted) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r:")
    except ArchiveError:
        raise
    except EOFError:
        raise ArchiveError(f"is truncated: it ends in its first header; {SEND}") from None
    except DAMAGE as err:
        raise ArchiveError(f"is not a readable tar file ({str(err)[:200]}); {SEND}") from None


def _tar_reader(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, budget: Budget):
    def read(limit: int) -> bytes:
        if member.size > limit:
            raise too_large(name, limit)
        with damage_named(f"member {shown(name)}"):
            stream = archive.extractfile(member)
        return read_all(stream, name, limit, budget)

    return read


def _decompressed(path: Path):
    """The tar's bytes, decompressed as they are read (by the magic bytes, not the name)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if (what := unreadable(head)) is not None:
        raise ArchiveError(f"is {what}, which this server cannot read: {SEND}")
    opener = next((o for magic, o in COMPRESSIONS.items() if head.startswith(magic)), None)
    return open(path, "rb") if opener is None else opener(path, "rb")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "link"
    if member.isdir():
        return "dir"
    if member.isreg() and not member.issparse():
        return "file"
    return "device, FIFO or other special file"
