"""Log setup for the entry points (predict.py, the CLI): sdxl's INFO lines to stderr.

Under Cog, a prediction's stderr becomes that prediction's logs, so each denoising step and
the step plan show up where Replicate shows logs.
"""

from __future__ import annotations

import logging
import sys


def configure(level: int = logging.INFO) -> None:
    logger = logging.getLogger("sdxl")
    logger.setLevel(level)
    if not any(getattr(h, "_sdxl", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._sdxl = True
        logger.addHandler(handler)
        logger.propagate = False
