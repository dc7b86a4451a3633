"""The training archive (sdxl/train/archive.py): what a good zip or tar yields (concepts,
captions beside images or in a CSV, matched by name), and every hostile one refused with an
error naming the member and the rule, nothing written outside the job's folder."""

from __future__ import annotations

import stat
import tarfile
import zipfile

import pytest
from support.archives import image_bytes, photos, write_tar, write_zip

from sdxl.train.archive import Archive, ArchiveError, ArchiveLimits, read_archive


def read(tmp_path, members: dict, kind: str = "zip", limits=None, token="TOK"):
    path = tmp_path / f"in.{kind}"
    (write_zip if kind == "zip" else write_tar)(path, members)
    return read_archive(path, "infer", tmp_path / "job", token, limits or ArchiveLimits())


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_a_flat_archive_is_one_concept_with_the_captions_beside_its_images(tmp_path, kind):
    found = read(tmp_path, photos(3), kind)
    assert found.concepts == ["TOK"]
    assert [i.member for i in found.images] == [f"photo-{i}.png" for i in range(3)]
    assert [i.caption for i in found.images] == [f"a photo of TOK number {i}" for i in range(3)]
    assert all(i.path.parent == tmp_path / "job" for i in found.images)


def test_concept_folders_train_their_own_tokens_and_one_wrapping_folder_is_not_one(tmp_path):
    members = {f"mine/{k}": v for k, v in {**photos(2, "DOG/"), **photos(1, "CAT/")}.items()}
    found = read(tmp_path, members)
    assert found.concepts == ["DOG", "CAT"]
    assert [i.concept for i in found.images] == ["DOG", "DOG", "CAT"]
    wrapped = read(tmp_path, {f"photos/{k}": v for k, v in photos(2).items()}, token="ME")
    assert wrapped.concepts == ["ME"]


def test_a_captions_csv_is_matched_by_file_name_not_by_position(tmp_path):
    members = photos(3, caption=None)
    members["captions.csv"] = b"caption,image_file\nthe third,photo-2.png\nthe first,photo-0.png\n"
    found = read(tmp_path, members)
    assert [i.caption for i in found.images] == ["the first", None, "the third"]


def test_webp_and_jpeg_images_are_read(tmp_path):
    members = {"a.webp": image_bytes(1, fmt="WEBP"), "b.jpg": image_bytes(2, fmt="JPEG")}
    assert len(read(tmp_path, members).images) == 2


def test_os_clutter_is_skipped(tmp_path):
    members = {**photos(1), "__MACOSX/._photo-0.png": b"junk", ".DS_Store": b"junk"}
    found = read(tmp_path, members)
    assert len(found.images) == 1 and found.clutter == 2 and found.skipped == []
    assert found.skipped_lines() == ["skipped 2 OS files (__MACOSX/, names starting with a dot)"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_stray_files_are_skipped_and_named_for_the_log(tmp_path, kind):
    """A README, a .gif, a CSV that is not the captions', a caption beside no image: skipped
    and named, not a failed archive."""
    stray = {
        "README": b"my photos",
        "anim.gif": b"GIF89a" + b"\x00" * 40,
        "notes.doc": b"hello",
        "data.csv": b"a,b",
        "lonely.txt": b"a caption of no image",
    }
    found = read(tmp_path, {**photos(2), **stray}, kind)
    assert [i.member for i in found.images] == ["photo-0.png", "photo-1.png"]
    assert sorted(found.skipped) == sorted(stray)
    (line,) = found.skipped_lines()
    assert line.startswith("skipped 5 files that are neither an image (.png, .jpg, .jpeg, .webp)")
    assert all(repr(name) in line for name in stray)
    many = Archive([], skipped=[f"f{i}.bin" for i in range(12)])
    assert many.skipped_lines()[0].endswith("'f9.bin' and 2 more")


HOSTILE = [
    ({"../escape.png": image_bytes(1)}, "'..' in its path"),
    ({"/etc/evil.png": image_bytes(1)}, "absolute path"),
    ({"broken.png": b"\x89PNG\r\n\x1a\n not really"}, "broken.png is not a readable image"),
    ({"dot.png": image_bytes(1, size=1)}, "'dot.png' is 1x1"),
    ({"gif.png": b"GIF89a" + b"\x00" * 40}, "gif.png is not a readable image"),
    ({"empty.txt": b"", **{"empty.png": image_bytes(1)}}, "empty caption"),
    ({**photos(1), **photos(1, "CAT/")}, "beside concept folders"),
    ({**photos(1, "not a token/"), **photos(1, "CAT/")}, "folder 'not a token' is its token"),
    (
        {"captions.csv": b"caption,image_file\nx,missing.png\n", **photos(1)},
        "is not in the archive",
    ),
    ({"readme.txt": b"no image here"}, "holds no image"),
]


@pytest.mark.parametrize(("members", "words"), HOSTILE, ids=[w for _, w in HOSTILE])
def test_a_hostile_archive_is_refused_naming_the_member(tmp_path, members, words):
    for kind in ("zip", "tar"):
        with pytest.raises(ArchiveError, match=words.replace("(", r"\(")) as caught:
            read(tmp_path, members, kind)
        assert str(caught.value).startswith("input_images: ")
    assert not (tmp_path.parent / "escape.png").exists()


def test_links_and_devices_in_a_tar_are_refused(tmp_path):
    for kind, words in ((tarfile.SYMTYPE, "is a link"), (tarfile.CHRTYPE, "is a device")):
        path = tmp_path / "odd.tar"
        with tarfile.open(path, "w") as archive:
            info = tarfile.TarInfo("odd.png")
            info.type = kind
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        with pytest.raises(ArchiveError, match=words):
            read_archive(path, "tar", tmp_path / "job", "TOK")


def test_a_symlink_in_a_zip_is_refused(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="is a link"):
        read_archive(path, "zip", tmp_path / "job", "TOK")


def test_a_zip_bomb_stops_at_the_byte_cap_whatever_its_headers_say(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.png", b"\x00" * (8 << 20))  # 8 MB of zeros, a few KB zipped
    assert path.stat().st_size < 100_000
    limits = ArchiveLimits(max_bytes=1 << 20)
    with pytest.raises(
        ArchiveError,
        match=r"more than 1048576 bytes uncompressed by 'bomb.png', which declares "
        r"8388608 bytes \(a zip bomb",
    ):
        read_archive(path, "infer", tmp_path / "job", "TOK", limits)
    assert sum(f.stat().st_size for f in (tmp_path / "job").iterdir()) <= 2 << 20


def test_too_many_members_or_images_are_refused(tmp_path):
    with pytest.raises(ArchiveError, match=r"more than 3 members \('\S+' is one too many\)"):
        read(tmp_path, photos(3), "tar", limits=ArchiveLimits(max_members=3))
    with pytest.raises(ArchiveError, match=r"more than 3 members \(its directory lists 6\)"):
        read(tmp_path, photos(3), "zip", limits=ArchiveLimits(max_members=3))
    with pytest.raises(
        ArchiveError, match=r"more than 2 images \('\S+' is one too many\).*SDXL_MAX_TRAIN_IMAGES"
    ):
        read(tmp_path, photos(3, caption=None), limits=ArchiveLimits(max_images=2))


def test_a_file_that_is_neither_zip_nor_tar_is_refused(tmp_path):
    path = tmp_path / "photos.bin"
    path.write_bytes(b"not an archive" * 10)
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        read_archive(path, "infer", tmp_path / "job", "TOK")
