"""Training archives for the tests: a few smooth random images (each different, each large
enough to train on), zipped or tarred, flat or in concept folders, with or without captions;
and the hostile ones, member by member."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: int = 256, fmt: str = "PNG") -> bytes:
    cells = np.random.default_rng(seed).uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(cells).resize((size, size), Image.BICUBIC).save(buffer, fmt)
    return buffer.getvalue()


def photos(count: int = 3, folder: str = "", caption: str | None = "a photo of TOK") -> dict:
    """name -> bytes: `count` images (and `name.txt` captions unless `caption` is None)."""
    members = {}
    for i in range(count):
        members[f"{folder}photo-{i}.png"] = image_bytes(i + 100 * len(folder))
        if caption is not None:
            members[f"{folder}photo-{i}.txt"] = f"{caption} number {i}".encode()
    return members


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
