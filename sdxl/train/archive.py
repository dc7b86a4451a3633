"""The training images' archive (`input_images`: a zip or a tar), read without trusting it.

Nothing is extracted with zipfile's or tarfile's own extract: the members are read one at a
time (`sdxl.train.members`: names checked, members and decompressed bytes bounded, skipped
members counted too, corrupt archives named), and only images and captions are copied, under
names of our own, into the job's folder. Members that are neither an image nor a caption (a
README, a .gif) and OS clutter (`__MACOSX/`, names starting with a dot) are skipped, and the
archive says which (`Archive.skipped`, `Archive.clutter`) for the training's log. A corrupt or
tiny image is an error naming it.

Concepts: one top-level folder per concept, named by its token (`dog/`, `cat/`); a flat
archive, or one whose images all sit in one folder, is one concept: `token_string`.
Captions: `name.txt` beside `name.png` (kohya's way), else a `.csv` whose name contains
"caption" with `caption` and `image_file` columns (the reference's; matched by file name, not
by position); else the image is captioned automatically.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from sdxl.images.inputs import FORMATS, ImageInputError, check_header
from sdxl.train.members import SEND, ArchiveError, ArchiveLimits, Budget, Member, shown
from sdxl.train.options import TOKEN_WORD
from sdxl.train.tar_members import compressed, tar_members, unreadable
from sdxl.train.zip_members import zip_members

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MIN_SIDE = 64  # pixels: smaller images cannot be cropped and scaled into anything useful

__all__ = ["Archive", "ArchiveError", "ArchiveLimits", "TrainImage", "read_archive"]


@dataclass
class TrainImage:
    member: str  # its name in the archive, for messages
    concept: str  # the token it trains
    path: Path  # its copy in the job's folder
    caption: str | None = None  # given (.txt beside it, or the CSV); None: automatic


@dataclass
class Archive:
    images: list[TrainImage]
    concepts: list[str] = field(default_factory=list)  # tokens, in order
    skipped: list[str] = field(default_factory=list)  # neither an image nor a caption
    clutter: int = 0  # OS clutter skipped (__MACOSX/, dot-files)

    def skipped_lines(self, most: int = 10) -> list[str]:
        """What was skipped, for the training's log (the first `most` names)."""
        lines = []
        if count := len(self.skipped):
            names = ", ".join(shown(name[:100]) for name in self.skipped[:most])
            more = f" and {count - most} more" if count > most else ""
            lines.append(
                f"skipped {_files(count)} neither an image ({', '.join(IMAGE_SUFFIXES)}) nor "
                f"a caption beside one: {names}{more}"
            )
        if self.clutter:
            lines.append(
                f"skipped {self.clutter} OS file{'s' * (self.clutter > 1)} (__MACOSX/, names "
                "starting with a dot)"
            )
        return lines


def _files(count: int) -> str:
    return "1 file that is" if count == 1 else f"{count} files that are"


def read_archive(
    path: Path,
    filetype: str,
    workdir: Path,
    token: str,
    limits: ArchiveLimits | None = None,
    check: Callable[[], None] | None = None,
) -> Archive:
    """The images, concepts and captions of `path` (filetype zip, tar or infer); `check` is
    called at least every MiB decompressed, and may raise to stop (a cancel)."""
    limits = limits or ArchiveLimits()
    workdir.mkdir(parents=True, exist_ok=True)
    found, images, texts, sheets = _copied(Path(path), filetype, workdir, limits, check)
    if not images:
        raise ArchiveError(f"the archive holds no image ({', '.join(IMAGE_SUFFIXES)})")
    for name, copy in images.items():
        if check is not None:
            check()  # each image is decoded whole: a cancel need not wait for them all
        _check_image(name, copy)
    concepts = _concepts(list(images), token)
    captions = _csv_captions(sheets, list(images))
    beside = {str(PurePosixPath(name).with_suffix(".txt")): name for name in images}
    found.skipped += [name for name in texts if name not in beside]  # a caption of no image
    for name, copy in images.items():
        text = str(PurePosixPath(name).with_suffix(".txt"))
        caption = _text(text, texts[text]) if text in texts else captions.get(name)
        found.images.append(TrainImage(name, concepts[name], copy, caption))
    found.concepts = list(dict.fromkeys(concepts.values()))
    return found


def _copied(path: Path, filetype: str, workdir: Path, limits: ArchiveLimits, check):
    """The members sorted: (the archive with what was skipped, image member -> its copy in
    `workdir`, .txt member -> bytes, captions CSV member -> bytes)."""
    images: dict[str, Path] = {}
    texts: dict[str, bytes] = {}
    sheets: dict[str, bytes] = {}
    found = Archive([])
    for member in _members(path, filetype, Budget(limits, check)):
        name, suffix = member.name, PurePosixPath(member.name).suffix.lower()
        if member.clutter:
            found.clutter += 1
        elif suffix in IMAGE_SUFFIXES:
            if len(images) >= limits.max_images:
                raise ArchiveError(
                    f"it holds more than {limits.max_images} images ({shown(name)} is one too "
                    "many), the most this server trains on (SDXL_MAX_TRAIN_IMAGES); send fewer"
                )
            target = workdir / f"{len(images):05d}{suffix}"
            target.write_bytes(member.read(limits.max_image_bytes))
            images[name] = target
        elif suffix == ".txt":
            texts[name] = member.read(limits.max_caption_bytes)
        elif suffix == ".csv" and "caption" in PurePosixPath(name).name.lower():
            sheets[name] = member.read(limits.max_caption_bytes * 16)
        else:
            member.skip()
            found.skipped.append(name)
    return found, images, texts, sheets


def _members(path: Path, filetype: str, budget: Budget) -> Iterator[Member]:
    if _kind(path, filetype) == "zip":
        return zip_members(path, budget)
    return tar_members(path, budget)


def _kind(path: Path, filetype: str) -> str:
    if filetype in ("zip", "tar"):
        return filetype
    name = path.name.lower()
    if name.endswith(".zip") or zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    if (what := unreadable(head)) is not None:
        raise ArchiveError(f"is {what}, which this server cannot read: {SEND}")
    if name.endswith(TAR_SUFFIXES) or compressed(head) or _tar_header(head):
        return "tar"
    raise ArchiveError(
        "is neither a zip nor a tar file; send a .zip or .tar of images (or set "
        "input_images_filetype)"
    )


def _tar_header(head: bytes) -> bool:
    """Whether `head` is an uncompressed tar's first header (read here, not by `tarfile`,
    which would read on into the archive)."""
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


# ---- images, concepts, captions -----------------------------------------------------------
def _check_image(name: str, copy: Path) -> None:
    data = copy.read_bytes()
    try:
        width, height = check_header(data, name)
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            img.load()
    except ImageInputError as err:  # names the member itself
        raise ArchiveError(str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ArchiveError(f"{shown(name)} is not a readable image ({err}); remove it") from None
    if min(width, height) < MIN_SIDE:
        raise ArchiveError(
            f"{name!r} is {width}x{height}; training needs images of at least {MIN_SIDE}x{MIN_SIDE}"
        )


def _concepts(names: list[str], token: str) -> dict[str, str]:
    """Each image's concept: the first folder when the images are in two or more top-level
    folders (after any one folder they all share), else `token`."""
    parts = {name: PurePosixPath(name).parts for name in names}
    while all(len(p) > 1 for p in parts.values()) and len({p[0] for p in parts.values()}) == 1:
        parts = {name: p[1:] for name, p in parts.items()}
    flat = [name for name, p in parts.items() if len(p) == 1]
    if len(flat) == len(names):
        return dict.fromkeys(names, token)
    if flat:
        folders = sorted({p[0] for p in parts.values() if len(p) > 1})
        raise ArchiveError(
            f"{flat[0]!r} is beside concept folders ({', '.join(f + '/' for f in folders)}): "
            "put every image in a concept folder named by its token, or none in any"
        )
    concepts = {}
    for name, p in parts.items():
        if not TOKEN_WORD.fullmatch(p[0]):
            raise ArchiveError(
                f"the concept folder {p[0]!r} is its token, and a token is one word of letters, "
                "digits and _ that starts with a letter (at most 32), such as TOK: rename it"
            )
        concepts[name] = p[0]
    return concepts


def _text(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ArchiveError(f"{name!r} is not UTF-8 text") from None
    if not text:
        raise ArchiveError(f"{name!r} is an empty caption; write one, or remove the file")
    return text


def _csv_captions(sheets: dict[str, bytes], images: list[str]) -> dict[str, str]:
    """image member -> caption, from every captions CSV (`image_file` relative to the CSV's
    folder, or a file name found once in the archive)."""
    by_base: dict[str, list[str]] = {}
    for name in images:
        by_base.setdefault(PurePosixPath(name).name, []).append(name)
    found: dict[str, str] = {}
    for sheet, data in sheets.items():
        rows = list(csv.DictReader(io.StringIO(_text(sheet, data))))
        if not rows or not {"caption", "image_file"} <= set(rows[0]):
            raise ArchiveError(f"{sheet!r} needs the columns caption and image_file")
        folder = PurePosixPath(sheet).parent
        for row in rows:
            wanted = (row["image_file"] or "").strip()
            here = str(folder / wanted) if str(folder) != "." else wanted
            match = [here] if here in images else by_base.get(PurePosixPath(wanted).name, [])
            if len(match) != 1:
                why = "is not in the archive" if not match else "names several images"
                raise ArchiveError(f"{sheet!r}: image_file {wanted!r} {why}")
            caption = (row["caption"] or "").strip()
            if not caption:
                raise ArchiveError(f"{sheet!r}: the caption of {wanted!r} is empty")
            found[match[0]] = caption
    return found
