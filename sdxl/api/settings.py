"""The REST server's settings, read from the environment once at startup."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024  # 20 MiB: room for a large base64 seed_image
DEFAULT_QUEUE_SIZE = 8
LOADING_RETRY_AFTER_S = 10
DRAINING_RETRY_AFTER_S = 5


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and the fix."""


def _int_setting(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise SettingsError(
            f"{name}={raw!r} is not valid; use a whole number of at least {minimum} "
            f"(default {default})"
        )
    return value


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests that may wait behind the running one

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            max_body_bytes=_int_setting(
                environ, "SDXL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024
            ),
            queue_size=_int_setting(environ, "SDXL_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, minimum=0),
        )
