"""Hostile training archives (sdxl/train/members.py and the zip and tar readers): bombs hidden in
members that are skipped (dot-files, __MACOSX/, stray files) or in a tar's own headers, counted
in decompressed bytes against SDXL_MAX_TRAIN_ARCHIVE_BYTES and refused by their declared sizes
before they are decompressed; a cancel that stops the read within a MiB; corrupt archives
refused naming the member and the problem; a zip's directory of too many entries refused before
zipfile parses it. Every count here is of the bytes the decompressors handed out (counted by
wrapping them), never a time."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import tarfile
import zipfile

import pytest
from support.archives import image_bytes, photos, write_tar

from sdxl.engine import JobCanceled
from sdxl.engine.outcome import outcome_of
from sdxl.train.archive import ArchiveError, ArchiveLimits, read_archive

MIB = 1 << 20
BUDGET = ArchiveLimits(max_bytes=4 * MIB)
SUFFIX = {"w:gz": "tar.gz", "w:bz2": "tar.bz2", "w:xz": "tar.xz", "w": "tar"}


@pytest.fixture
def decompressed(monkeypatch) -> list[int]:
    """The bytes every decompressor (and zip member stream) handed out, summed in [0]."""
    total = [0]
    for cls in (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile, zipfile.ZipExtFile):
        real = cls.read

        def read(self, size=-1, real=real):
            data = real(self, size)
            total[0] += len(data)
            return data

        monkeypatch.setattr(cls, "read", read)
    return total


def read(tmp_path, path, limits=BUDGET, check=None):
    return read_archive(path, "infer", tmp_path / "job", "TOK", limits, check)


def tar_of(tmp_path, members: dict, mode: str):
    return write_tar(tmp_path / f"in.{SUFFIX[mode]}", members, mode)


HIDDEN = [("w:gz", ".hidden"), ("w:bz2", "__MACOSX/._photo-0.png"), ("w:bz2", "README")]


@pytest.mark.parametrize(("mode", "hidden"), HIDDEN)
def test_a_bomb_in_a_skipped_tar_member_is_refused_before_it_is_decompressed(
    tmp_path, decompressed, mode, hidden
):
    """32 MiB of zeros in a member that is skipped (a few KB compressed): its header's size
    is over the 4 MiB budget, so none of it is decompressed."""
    path = tar_of(tmp_path, {**photos(1), hidden: bytes(32 * MIB)}, mode)
    assert path.stat().st_size < 100_000
    words = rf"more than {4 * MIB} bytes uncompressed by '{hidden}', which declares {32 * MIB}"
    with pytest.raises(ArchiveError, match=words):
        read(tmp_path, path)
    assert decompressed[0] < MIB  # the photo and the headers


def test_a_bomb_in_a_skipped_zip_member_is_refused_by_its_declared_size(tmp_path, decompressed):
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in {**photos(1), ".hidden": bytes(32 * MIB)}.items():
            archive.writestr(name, data)
    with pytest.raises(ArchiveError, match=rf"by '.hidden', which declares {32 * MIB} bytes"):
        read(tmp_path, path)
    assert decompressed[0] < MIB  # the photo only: a skipped zip member is never read


@pytest.mark.parametrize("kind", ["w:gz", "zip"])
def test_skipped_members_add_up_to_the_budget_in_bytes(tmp_path, decompressed, kind):
    """Eight skipped members of 1 MiB each, each under the budget: together over it, refused
    at the one that does not fit, with no more decompressed than the budget."""
    members = {**photos(1), **{f".junk-{i}": bytes(MIB) for i in range(8)}}
    if kind == "zip":
        path = tmp_path / "in.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        path = tar_of(tmp_path, members, kind)
    with pytest.raises(ArchiveError, match=rf"more than {4 * MIB} bytes .* by '.junk-3'"):
        read(tmp_path, path)
    assert decompressed[0] <= BUDGET.max_bytes


def test_a_tar_header_that_declares_a_bomb_is_refused_before_it_is_read(tmp_path, decompressed):
    """A pax header of 16 MiB (tarfile would read it whole into memory): refused from its
    declared size."""
    path = tmp_path / "in.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("photo-0.png")
        data = image_bytes(1)
        info.size, info.pax_headers = len(data), {"comment": "x" * (16 * MIB)}
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match=r"by its first header, which declares \d{8} bytes"):
        read(tmp_path, path)
    assert decompressed[0] < MIB


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "zip"])
def test_a_cancel_stops_the_read_within_a_mib(tmp_path, decompressed, mode):
    """A 24 MiB member under a 64 MiB budget, the cancel raised at the fourth check: the read
    stops with at most a MiB decompressed after each of the three checks before it."""
    members = {"big.png": bytes(24 * MIB), **photos(1)}
    if mode == "zip":
        path = tmp_path / "in.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("big.png", members["big.png"])
    else:
        path = tar_of(tmp_path, members, mode)
    calls = []

    def check():
        calls.append(decompressed[0])
        if len(calls) > 3:
            raise JobCanceled("stop")

    with pytest.raises(JobCanceled):
        read(tmp_path, path, ArchiveLimits(max_bytes=64 * MIB), check)
    assert len(calls) == 4 and decompressed[0] <= 4 * MIB
    assert all(b - a <= MIB for a, b in zip([0, *calls], calls, strict=False))


# ---- corrupt archives ---------------------------------------------------------------------
def zip_patched(tmp_path, at_directory: int, value: int, size: str = "<H") -> object:
    """A zip of one deflated photo whose directory entry has `value` at `at_directory`."""
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("photo-0.png", image_bytes(1))
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    struct.pack_into(size, data, entry + at_directory, value)
    path.write_bytes(bytes(data))
    return path


def test_an_encrypted_zip_member_is_refused_naming_it(tmp_path):
    path = zip_patched(tmp_path, 8, 0x1)  # the flag bits: encrypted
    with pytest.raises(ArchiveError, match="member 'photo-0.png' is encrypted"):
        read(tmp_path, path)


def test_a_zip_member_in_an_unknown_compression_is_refused_naming_it(tmp_path):
    path = zip_patched(tmp_path, 10, 93)  # zstd: not zipfile's
    with pytest.raises(
        ArchiveError, match="member 'photo-0.png' uses zip compression method 93, which this"
    ):
        read(tmp_path, path)


def test_bad_deflate_data_is_refused_naming_the_member(tmp_path):
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("photo-0.png", image_bytes(1))
    data = bytearray(path.read_bytes())
    start = 30 + len("photo-0.png")  # the first local header, then the deflated data
    data[start + 20 : start + 60] = b"\xff" * 40
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"member 'photo-0.png' is damaged \(\w+: ") as caught:
        read(tmp_path, path)
    assert outcome_of(caught.value).kind == "input"  # the user's, no traceback logged


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_a_truncated_tar_is_refused_naming_the_member_it_ends_in(tmp_path, mode):
    members = {**photos(1, caption=None), "noise.png": os.urandom(2_000_000)}  # bz2: 2 blocks
    path = tar_of(tmp_path, members, mode)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="member 'noise.png' is truncated: the archive ends"):
        read(tmp_path, path)


def test_a_damaged_bzip2_stream_is_refused_naming_where(tmp_path):
    path = tar_of(tmp_path, {**photos(1), "noise.png": os.urandom(2_000_000)}, "w:bz2")
    data = bytearray(path.read_bytes())
    at = len(data) * 3 // 4  # in the noise's second block of 900 kB
    data[at : at + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"member 'noise.png' is damaged \(OSError: "):
        read(tmp_path, path)


def test_a_gzip_whose_data_changed_fails_its_checksum_not_the_training(tmp_path):
    path = tar_of(tmp_path, {**photos(1), "noise.png": os.urandom(200_000)}, "w:gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64  # inside the noise
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"(member 'noise.png'|at its end,) is damaged \("):
        read(tmp_path, path)


def test_unreadable_compressions_and_archives_are_named(tmp_path):
    for magic, what in ((b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"Rar!\x1a\x07\x00", "RAR")):
        path = tmp_path / "in.tar.zst"
        path.write_bytes(magic + os.urandom(600))
        with pytest.raises(ArchiveError, match=f"is an? {what} .*, which this server cannot read"):
            read(tmp_path, path)


# ---- a zip's directory --------------------------------------------------------------------
def many_entries(path, count: int, prefix: bytes = b""):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            archive.writestr(f"f{i}.txt", b"")
    path.write_bytes(prefix + buffer.getvalue())
    return path


@pytest.fixture
def never_parsed(monkeypatch):
    def parsed(self):
        raise AssertionError("zipfile parsed the whole directory")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", parsed)


def test_a_zip_of_more_than_10000_entries_is_refused_before_its_directory_is_parsed(
    tmp_path, never_parsed
):
    path = many_entries(tmp_path / "in.zip", 10_001)
    with pytest.raises(ArchiveError, match=r"more than 10000 members \(its directory lists 10001"):
        read(tmp_path, path, ArchiveLimits())


def test_a_zip_whose_end_record_understates_its_entries_is_counted_by_its_directory(
    tmp_path, never_parsed
):
    """12 entries (after 1000 bytes of something else, as a self-extracting zip has) whose
    end record says 3: the directory's walk counts them."""
    path = many_entries(tmp_path / "in.zip", 12, prefix=os.urandom(1000))
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 3, 3)  # entries on this disk, entries in all
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"more than 10 members \(its directory holds more"):
        read(tmp_path, path, ArchiveLimits(max_members=10))
