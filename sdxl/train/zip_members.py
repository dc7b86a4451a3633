"""A training archive's members from a zip (`sdxl.train.members` has the rules they share).

The member count is read from the end record and the directory's entry headers walked before
`zipfile` parses the directory whole (it builds an object per entry in its constructor): more
than `max_members` are refused at once. A skipped member is charged its declared size and never
read (zipfile never reads more of a member than its declared size); an encrypted member, or one
in a compression zipfile cannot read, is refused naming it.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sdxl.train.members import (
    DAMAGE,
    ArchiveError,
    Budget,
    Member,
    checked_name,
    clutter,
    damage_named,
    read_all,
    shown,
    too_large,
    too_many,
)

METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def zip_members(path: Path, budget: Budget) -> Iterator[Member]:
    """Each file of the zip at `path`, in the directory's order (directories left out)."""
    _count_zip_directory(path, budget.limits.max_members)
    with _opened_zip(path) as archive:
        for info in archive.infolist():
            budget.count(info.filename)
            name = checked_name(info.filename, _zip_kind(info))
            label = shown(name or info.filename)
            budget.expect(label, info.file_size)

            def skip(info=info, label=label) -> None:
                budget.spend(label, info.file_size)  # as if read: the cap is on what it holds

            if name is None or info.is_dir():
                skip()
                if name is None and not info.is_dir():
                    yield clutter(info.filename)
                continue
            yield Member(
                name, False, lambda limit, i=info: _zip_read(archive, i, limit, budget), skip
            )


def _zip_read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: Budget) -> bytes:
    name = info.filename
    if info.flag_bits & 0x1:
        raise ArchiveError(
            f"member {shown(name)} is encrypted (password-protected): zip it without a password"
        )
    if info.compress_type not in METHODS:
        raise ArchiveError(
            f"member {shown(name)} uses zip compression method {info.compress_type}, which this "
            "server cannot read: zip it again with deflate (zip's default) or no compression"
        )
    if info.file_size > limit:
        raise too_large(name, limit)
    with damage_named(f"member {shown(name)}"):
        stream = archive.open(info)
    with stream:
        return read_all(stream, name, limit, budget)


def _count_zip_directory(path: Path, most: int) -> None:
    """More than `most` members refused from the end record's count, then from a walk of the
    directory's entry headers (what `zipfile` parses, whatever the count says), before
    `zipfile` builds an object per entry. A zip this cannot read is left to `zipfile`'s own
    error. The end record is the one `zipfile` itself finds (`_EndRecData`)."""
    with open(path, "rb") as fp:
        try:
            end = zipfile._EndRecData(fp)
        except OSError:
            return
        if not end:
            return
        if end[zipfile._ECD_ENTRIES_TOTAL] > most:
            declared = end[zipfile._ECD_ENTRIES_TOTAL]
            raise too_many(most, f"its directory lists {declared}")
        size = end[zipfile._ECD_SIZE]
        start = end[zipfile._ECD_LOCATION] - size  # as zipfile finds it (data before the zip)
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        if start < 0:
            return
        fp.seek(start)
        directory = fp.read(size)
    count, at = 0, 0
    while at < size and len(directory) - at >= zipfile.sizeCentralDir:
        if directory[at : at + 4] != zipfile.stringCentralDir:
            return  # zipfile refuses it
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", directory, at + 28)
        at += zipfile.sizeCentralDir + name_len + extra_len + comment_len
        count += 1
        if count > most:
            raise too_many(most, "its directory holds more")


def _opened_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except DAMAGE as err:
        raise ArchiveError(f"is not a readable zip file ({str(err)[:200]})") from None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if info.is_dir() else "file"
