"""Log set-up. Cog's predictor and the CLI: sdxl's lines to stderr (under Cog, a prediction's
stderr becomes that prediction's logs). The API server: every logger's lines, plain or one JSON
object a line (SDXL_LOG_FORMAT=json).

Every line logged while a job is prepared or run carries that job's id (the prediction id on
Replicate's API) as `prediction_id`: the engine sets it with `job_context` on its threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sdxl_job_id", default=None)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged in this thread until the block ends belong to job `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Gives each record `prediction_id`: the one passed in `extra`, else the current job's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "prediction_id", None) is None:
            record.prediction_id = _job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line (a dozen lines of the stdlib: no dependency needed for this)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "prediction_id", None) is not None:
            line["prediction_id"] = record.prediction_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_format(raw: str | None) -> str:
    """The SDXL_LOG_FORMAT value checked: text (the default) or json."""
    value = (raw or "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"SDXL_LOG_FORMAT={raw!r} is not valid; use text or json")
    return value


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


class NoTorchvisionNotice(logging.Filter):
    """Drops transformers' notice that its image processors fall back to PIL without
    torchvision: that fallback is what this product uses (it never installs torchvision)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def quiet_libraries() -> None:
    """Keep what the libraries print to what a user needs: no torchvision notice, no progress
    bar per file written (the builders save many small models)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, NoTorchvisionNotice) for f in logger.filters):
        logger.addFilter(NoTorchvisionNotice())
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


_server_handler: logging.Handler | None = None


def configure_server(fmt: str, level: int = logging.INFO) -> None:
    """Send every logger's lines, and warnings, to stderr in `fmt` (text or json), job ids
    attached."""
    global _server_handler
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    _server_handler = handler


def adopt_library_loggers() -> None:
    """Route the lines of transformers and diffusers, which print through handlers of their
    own, through the server's. Imports them (call it where the model loads); does nothing
    unless `configure_server` ran."""
    if _server_handler is None:
        return
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (transformers.utils.logging, diffusers.utils.logging):
        library.disable_default_handler()
        library.enable_propagation()
