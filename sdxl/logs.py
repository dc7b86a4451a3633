"""Log setup for the entry points (predict.py, the CLI): sdxl's INFO lines to stderr.

Under Cog, a prediction's stderr becomes that prediction's logs, so each denoising step and
the step plan show up where Replicate shows logs.
"""

from __future__ import annotations

import logging
import sys


def configure(level: int = logging.INFO, job_lines: bool = True) -> None:
    """sdxl's log lines to stderr. `job_lines=False` leaves out the engine's per-job lines,
    for a caller that prints each job's own log lines itself (predict.py)."""
    logger = logging.getLogger("sdxl")
    logger.setLevel(level)
    logging.getLogger("sdxl.engine").setLevel(level if job_lines else logging.WARNING)
    if not any(getattr(h, "_sdxl", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._sdxl = True
        logger.addHandler(handler)
        logger.propagate = False
