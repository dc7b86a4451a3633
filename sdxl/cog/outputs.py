"""Where a prediction's files go: a fresh folder each time, the previous one removed."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from sdxl.images.outputs import OutputImage, encode_outputs
from sdxl.images.result import Result

# coglet (0.23) keeps an empty inputs/outputs folder per prediction here and never removes it.
COGLET_PREDICTIONS = Path("/tmp/coglet/predictions")
KEEP_COGLET_FOLDERS = 8


def sweep_coglet_folders(root: Path = COGLET_PREDICTIONS, keep: int = KEEP_COGLET_FOLDERS) -> int:
    """Remove coglet's empty per-prediction folders but the newest `keep` (the current one is
    among them). Returns how many went."""
    try:
        folders = sorted(root.glob("pred_*"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return 0
    removed = 0
    for folder in folders[keep:]:
        if not any(path.is_file() for path in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class OutputWriter:
    """Writes each prediction's images to a new folder under one private temp root.

    The server reads a prediction's files after run() returns, so the previous prediction's
    folder is removed when the next one starts writing. Everything under the root is cleared
    each time, so a prediction cancelled at any point leaves nothing that outlives the next one.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="sdxl-outputs-")) if root is None else root

    def write(self, result: Result, fmt: str, quality: int) -> list[tuple[Path, OutputImage]]:
        """The images not flagged (Replicate's behaviour; AllFlagged when none is left), each
        encoded to a file: (its path, what it holds)."""
        outputs = encode_outputs(result, fmt, quality, flagged="drop")
        kept = sum(not output.control_map for output in outputs)
        if kept < len(result.images):
            print(f"left out {len(result.images) - kept} image(s) flagged as unsafe")
        self.clear()
        sweep_coglet_folders()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        written = []
        for output in outputs:
            path = folder / output.name
            path.write_bytes(output.data)
            written.append((path, output))
        return written

    def clear(self) -> None:
        """Remove every earlier prediction's outputs."""
        if self.root.exists():
            for child in self.root.iterdir():
                shutil.rmtree(child, ignore_errors=True)
