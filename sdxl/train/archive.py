"""The training images' archive (`input_images`: a zip or a tar), read without trusting it.

Nothing is extracted with zipfile's or tarfile's own extract: each member's name is checked (no
absolute path, no `..`, no NUL or backslash; no link, device or FIFO), the number of members
and the bytes read are bounded as they are read (a zip bomb stops at the cap, whatever its
headers claim), and only images and captions are copied, under names of our own, into the
job's folder. A member of any other kind is an error naming it; a corrupt or tiny image too.
OS clutter (`__MACOSX/`, names starting with a dot) is skipped.

Concepts: one top-level folder per concept, named by its token (`dog/`, `cat/`); a flat
archive, or one whose images all sit in one folder, is one concept: `token_string`.
Captions: `name.txt` beside `name.png` (kohya's way), else a `.csv` whose name contains
"caption" with `caption` and `image_file` columns (the reference's; matched by file name, not
by position); else the image is captioned automatically.
"""

from __future__ import annotations

import csv
import io
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from sdxl.errors import InputError
from sdxl.images.inputs import FORMATS, ImageInputError, check_header
from sdxl.train.options import TOKEN_WORD

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_SIDE = 64  # pixels: smaller images cannot be cropped and scaled into anything useful
CHUNK = 1 << 20
INPUT = "input_images"


class ArchiveError(InputError):
    """The archive cannot be trained on; the message names the member and the rule."""

    def __init__(self, message: str):
        super().__init__(f"{INPUT}: {message}", INPUT)


@dataclass(frozen=True)
class ArchiveLimits:
    max_images: int = 1000  # SDXL_MAX_TRAIN_IMAGES
    max_members: int = 10_000
    max_bytes: int = 2 << 30  # all members read, uncompressed
    max_image_bytes: int = 64 << 20
    max_caption_bytes: int = 64 << 10


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


def read_archive(
    path: Path, filetype: str, workdir: Path, token: str, limits: ArchiveLimits = ArchiveLimits()
) -> Archive:
    """The images, concepts and captions of `path` (filetype zip, tar or infer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    texts: dict[str, bytes] = {}
    sheets: dict[str, bytes] = {}
    for name, read in _members(Path(path), filetype, limits):
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if len(images) >= limits.max_images:
                raise ArchiveError(
                    f"it holds more than {limits.max_images} images ({name!r} is one too many), "
                    "the most this server trains on (SDXL_MAX_TRAIN_IMAGES); send fewer"
                )
            target = workdir / f"{len(images):05d}{suffix}"
            target.write_bytes(read(limits.max_image_bytes))
            images[name] = target
        elif suffix == ".txt":
            texts[name] = read(limits.max_caption_bytes)
        elif suffix == ".csv" and "caption" in PurePosixPath(name).name.lower():
            sheets[name] = read(limits.max_caption_bytes * 16)
        else:
            raise ArchiveError(
                f"{name!r} is not an image ({', '.join(IMAGE_SUFFIXES)}), a caption (a .txt "
                "beside its image) or a captions CSV (a .csv whose name contains 'caption'); "
                "remove it from the archive"
            )
    if not images:
        raise ArchiveError(f"the archive holds no image ({', '.join(IMAGE_SUFFIXES)})")
    for name, copy in images.items():
        _check_image(name, copy)
    concepts = _concepts(list(images), token)
    captions = _csv_captions(sheets, list(images))
    found = []
    for name, copy in images.items():
        beside = str(PurePosixPath(name).with_suffix(".txt"))
        caption = _text(beside, texts[beside]) if beside in texts else captions.get(name)
        found.append(TrainImage(name, concepts[name], copy, caption))
    return Archive(found, list(dict.fromkeys(concepts.values())))


# ---- members ------------------------------------------------------------------------------
def _members(path: Path, filetype: str, limits: ArchiveLimits) -> Iterator[tuple[str, object]]:
    """(checked name, read(limit) -> bytes) for each file worth reading."""
    kind = _kind(path, filetype)
    budget = {"left": limits.max_bytes, "members": 0}

    def counted(stream, limit: int, name: str) -> bytes:
        data = bytearray()
        while chunk := stream.read(CHUNK):
            data += chunk
            budget["left"] -= len(chunk)
            if budget["left"] < 0:
                raise ArchiveError(
                    f"its members add up to more than {limits.max_bytes} bytes uncompressed "
                    f"by {name!r} (a zip bomb, or too many large images); refused"
                )
            if len(data) > limit:
                raise ArchiveError(f"{name!r} is larger than {limit} bytes; refused")
        return bytes(data)

    def count(name: str) -> None:
        budget["members"] += 1
        if budget["members"] > limits.max_members:
            raise ArchiveError(
                f"it has more than {limits.max_members} members ({name!r} is one too many); refused"
            )

    if kind == "zip":
        with _opened_zip(path) as archive:
            for info in archive.infolist():
                count(info.filename)
                name = _checked(info.filename, _zip_kind(info))
                if name is None or info.is_dir():
                    continue
                yield name, lambda limit, i=info, n=name: counted(archive.open(i), limit, n)
        return
    with _opened_tar(path) as archive:
        while (member := _next(archive)) is not None:
            count(member.name)
            name = _checked(member.name, _tar_kind(member))
            if name is None or member.isdir():
                continue
            yield name, lambda limit, m=member, n=name: counted(archive.extractfile(m), limit, n)


def _kind(path: Path, filetype: str) -> str:
    if filetype in ("zip", "tar"):
        return filetype
    name = path.name.lower()
    if name.endswith(".zip") or zipfile.is_zipfile(path):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")) or _is_tar(path):
        return "tar"
    raise ArchiveError(
        "is neither a zip nor a tar file; send a .zip or .tar of images (or set "
        "input_images_filetype)"
    )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _opened_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ArchiveError(f"is not a readable zip file ({err})") from None


def _opened_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ArchiveError(f"is not a readable tar file ({err})") from None


def _next(archive: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return archive.next()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ArchiveError(f"the tar is damaged ({err})") from None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if info.is_dir() else "file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "link"
    if member.isdir():
        return "dir"
    if member.isreg() and not member.issparse():
        return "file"
    return "device, FIFO or other special file"


def _checked(raw: str, kind: str) -> str | None:
    """The member's clean name; None for OS clutter; ArchiveError for a hostile one."""
    shown = repr(raw[:200])
    if "\x00" in raw or "\\" in raw:
        raise ArchiveError(f"member {shown} has a NUL or a backslash in its name; refused")
    if raw.startswith("/") or PurePosixPath(raw).is_absolute():
        raise ArchiveError(f"member {shown} has an absolute path; refused")
    parts = [p for p in PurePosixPath(raw).parts if p not in (".", "")]
    if ".." in parts:
        raise ArchiveError(f"member {shown} has '..' in its path; refused")
    if kind == "link":
        raise ArchiveError(f"member {shown} is a link; refused")
    if kind not in ("file", "dir"):
        raise ArchiveError(f"member {shown} is a {kind}; refused")
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return "/".join(parts)


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
        raise ArchiveError(f"{name!r} is not a readable image ({err}); remove it") from None
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
