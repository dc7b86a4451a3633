"""The members of a training archive, read without trusting it: what the zip and the tar
readers share (`sdxl.train.zip_members`, `sdxl.train.tar_members`; `sdxl.train.archive` decides
what each member is).

- Every byte the archive decompresses to counts against `max_bytes` (`Budget`), the members
  skipped (OS clutter, stray files) as much as those read, and a member whose header declares
  more than is left is refused before a byte of it is decompressed.
- `check` (the job's cancel) is called after every count, so at least every MiB decompressed.
- A corrupt archive is an ArchiveError naming the member and what is wrong (damaged data,
  truncated, encrypted, a compression this server cannot read), never a library's traceback.
- Names are checked: no absolute path, `..`, NUL or backslash; no link, device or FIFO.
"""

from __future__ import annotations

import contextlib
import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from sdxl.errors import InputError

CHUNK = 1 << 20  # bytes decompressed at most between two counts (and cancel checks)
INPUT = "input_images"
BYTES_CAP = "SDXL_MAX_TRAIN_ARCHIVE_BYTES"
SEND = "send a .zip, or a .tar (plain, .gz, .bz2 or .xz)"
# What the compression and archive libraries raise on bad data (a corrupt archive, not a bug).
DAMAGE = (
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    tarfile.TarError,
    zipfile.BadZipFile,
)


class ArchiveError(InputError):
    """The archive cannot be trained on; the message names the member and the rule."""

    def __init__(self, message: str):
        super().__init__(f"{INPUT}: {message}", INPUT)


@dataclass(frozen=True)
class ArchiveLimits:
    max_images: int = 1000  # SDXL_MAX_TRAIN_IMAGES
    max_members: int = 10_000
    max_bytes: int = 2 << 30  # SDXL_MAX_TRAIN_ARCHIVE_BYTES: every member, uncompressed
    max_image_bytes: int = 64 << 20
    max_caption_bytes: int = 64 << 10


@dataclass
class Member:
    name: str  # checked, as it is in the archive
    clutter: bool  # OS clutter (__MACOSX/, a dot-file): skipped
    read: Callable[[int], bytes]  # its bytes, ArchiveError past `limit` of them
    skip: Callable[[], None]  # it is not read: its bytes are counted all the same


class Budget:
    """The members counted, and the bytes the archive decompressed to as they come (`used`),
    with the cancel check after each count."""

    def __init__(self, limits: ArchiveLimits, check: Callable[[], None] | None = None):
        self.limits = limits
        self.limit = limits.max_bytes
        self.used = 0
        self.members = 0
        self.check = check or (lambda: None)

    def count(self, raw: str) -> None:
        """One more member (`raw`: its name as the archive has it)."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise too_many(self.limits.max_members, f"{shown(raw)} is one too many")

    def expect(self, where: str, size: int) -> None:
        """Before `size` more bytes are decompressed for `where` (a member, as `shown`; its
        header's word): refused now if they do not fit."""
        if self.used + size > self.limit:
            raise self.over(where, size)

    def spend(self, where: str, count: int) -> None:
        """`count` bytes decompressed for `where`; then the cancel check."""
        self.used += count
        if self.used > self.limit:
            raise self.over(where)
        self.check()

    def over(self, where: str, declared: int | None = None) -> ArchiveError:
        says = "" if declared is None else f", which declares {declared} bytes"
        return ArchiveError(
            f"its members add up to more than {self.limit} bytes uncompressed by {where}{says} "
            f"(a zip bomb, or too many large images; {BYTES_CAP} is the cap); refused"
        )


def shown(name: str) -> str:
    return repr(name[:200])


def too_many(most: int, why: str) -> ArchiveError:
    return ArchiveError(f"it has more than {most} members ({why}); refused")


@contextlib.contextmanager
def damage_named(where: str) -> Iterator[None]:
    """What a library raises on bad data, as an ArchiveError naming `where` and the problem."""
    try:
        yield
    except ArchiveError:
        raise
    except DAMAGE as err:
        if isinstance(err, EOFError) or "unexpected end of data" in str(err):
            why = "is truncated: the archive ends inside it; send the whole archive"
        else:
            why = f"is damaged ({type(err).__name__}: {str(err)[:200]}); make the archive again"
        raise ArchiveError(f"{where} {why}") from None


def read_all(stream, name: str, limit: int, budget: Budget) -> bytes:
    """A member's bytes from `stream`, counted as they come; ArchiveError past `limit`."""
    data = bytearray()
    with damage_named(f"member {shown(name)}"):
        while chunk := stream.read(CHUNK):
            data += chunk
            budget.spend(shown(name), len(chunk))
            if len(data) > limit:
                raise too_large(name, limit)
    return bytes(data)


def too_large(name: str, limit: int) -> ArchiveError:
    return ArchiveError(f"{shown(name)} is larger than {limit} bytes; refused")


def clutter(raw: str) -> Member:
    """OS clutter: skipped, never read (its bytes counted by the reader that found it)."""

    def never(limit: int) -> bytes:
        raise AssertionError("OS clutter is never read")

    return Member(raw, True, never, lambda: None)


def checked_name(raw: str, kind: str) -> str | None:
    """The member's clean name; None for OS clutter; ArchiveError for a hostile one."""
    name = shown(raw)
    if "\x00" in raw or "\\" in raw:
        raise ArchiveError(f"member {name} has a NUL or a backslash in its name; refused")
    if raw.startswith("/") or PurePosixPath(raw).is_absolute():
        raise ArchiveError(f"member {name} has an absolute path; refused")
    parts = [p for p in PurePosixPath(raw).parts if p not in (".", "")]
    if ".." in parts:
        raise ArchiveError(f"member {name} has '..' in its path; refused")
    if kind == "link":
        raise ArchiveError(f"member {name} is a link; refused")
    if kind not in ("file", "dir"):
        raise ArchiveError(f"member {name} is a {kind}; refused")
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return "/".join(parts)
