"""What the trainer prints where a person reads it (`python -m sdxl train`'s stderr, the Cog
trainer's logs): every line of the training's log as it comes (the images, skipped files,
captions, the seed used, checkpoints), the per-step lines (step, loss, learning rate, speed,
ETA) only with `verbose`; and, once the tar is written, its web UI files and the words that
call them in a prompt. A stored training's logs on the trainings API always hold every line
(the playground's loss chart reads the step lines)."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from sdxl.train.output import DIFFUSERS_EMBEDDINGS, EMBEDDINGS_DIR

STEP_LINE = re.compile(r"step \d+/\d+ loss ")


def shown(line: str, verbose: bool) -> bool:
    """Whether a log line is printed: all of them with `verbose`, else all but the steps'."""
    return verbose or not STEP_LINE.match(line)


def webui_lines(tar_path: Path) -> list[str]:
    """One line per web UI file in the tar: where it goes and how a prompt calls it."""
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    lines = []
    for name in names:
        stem = Path(name).stem
        if name.startswith(EMBEDDINGS_DIR):
            lines.append(
                f"{name}: an embedding for embeddings/; write {stem} in the prompt "
                f"(ComfyUI: embedding:{stem})"
            )
        elif name.startswith("webui/") and name.count("/") == 1 and name != DIFFUSERS_EMBEDDINGS:
            lines.append(f"{name}: the LoRA for models/Lora/; <lora:{stem}:1> in the prompt")
    return lines
