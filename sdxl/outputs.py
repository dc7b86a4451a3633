"""Where a prediction's files go: a fresh folder each time, the previous one removed."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from sdxl.generate import Result
from sdxl.images import save_image


class OutputWriter:
    """Writes each prediction's images to a new folder under one private temp root.

    The server reads a prediction's files after predict() returns, so the previous
    prediction's folder is removed when the next one starts writing. Everything under the
    root is cleared each time, so a prediction cancelled at any point leaves nothing that
    outlives the next one.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="sdxl-outputs-")) if root is None else root

    def write(self, result: Result, fmt: str, quality: int) -> list[Path]:
        self.clear()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        paths = []
        for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
            metadata = {**result.parameters, "seed": seed}
            paths.append(save_image(image, folder / f"out-{i}", fmt, quality, metadata))
        return paths

    def clear(self) -> None:
        """Remove every earlier prediction's outputs."""
        if self.root.exists():
            for child in self.root.iterdir():
                shutil.rmtree(child, ignore_errors=True)
