"""The API server's settings, read from the environment once at startup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sdxl.config import env_number

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024  # 20 MiB: room for a large base64 seed_image
DEFAULT_QUEUE_SIZE = 8
LOADING_RETRY_AFTER_S = 10
DRAINING_RETRY_AFTER_S = 5
# The model the Replicate guide calls, with the version id it uses.
GUIDE_MODEL = "stability-ai/sdxl:39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and the fix."""


def _number(environ: Mapping[str, str], name: str, default, minimum, parse=int):
    try:
        return env_number(environ, name, parse, minimum, default)
    except ValueError as err:
        raise SettingsError(str(err)) from None


def _public_url(raw: str) -> str | None:
    raw = raw.strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise SettingsError(
            f"SDXL_PUBLIC_URL={raw!r} is not valid; give the server's public origin, such as "
            "https://sdxl.example.com (clients treat only https: output URLs as files)"
        )
    return raw


def _models(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        model = name.partition(":")[0]
        owner, slash, model_name = model.partition("/")
        if not (owner and slash and model_name) or "/" in model_name or " " in name:
            raise SettingsError(
                f"SDXL_REPLICATE_MODELS has {name!r}; list models as owner/name or "
                "owner/name:version, comma-separated"
            )
    if not names:
        raise SettingsError("SDXL_REPLICATE_MODELS is empty; name at least one owner/name")
    return names


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sdxl-cog"


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE  # DataCrunch requests that may wait for the GPU
    public_url: str | None = None  # SDXL_PUBLIC_URL: the origin of every URL the API returns
    state_dir: Path = field(default_factory=default_state_dir)  # SDXL_STATE_DIR
    database_url: str | None = None  # SDXL_DATABASE_URL (default: SQLite in state_dir)
    prediction_ttl_s: float = 3600.0  # SDXL_PREDICTION_TTL
    max_stored_predictions: int = 10_000  # SDXL_MAX_STORED_PREDICTIONS
    max_stored_bytes: int = 10 << 30  # SDXL_MAX_STORED_BYTES
    max_queued_predictions: int = 1000  # SDXL_MAX_QUEUED_PREDICTIONS
    models: tuple[str, ...] = (GUIDE_MODEL,)  # SDXL_REPLICATE_MODELS
    page_size: int = 100  # SDXL_PAGE_SIZE: predictions per page of GET /v1/predictions
    webhook_secret: str | None = None  # SDXL_WEBHOOK_SECRET (default: made once, stored)
    # SDXL_REPLICA_TIMEOUT: on a shared database, a replica silent this long is dead
    replica_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        from sdxl.trained.fetch import parse_size

        def size(name: str, default: int) -> int:
            raw = environ.get(name, "").strip()
            try:
                return parse_size(raw) if raw else default
            except ValueError as err:
                raise SettingsError(f"{name}={raw!r} is not a size such as 10G ({err})") from None

        secret = environ.get("SDXL_WEBHOOK_SECRET", "").strip() or None
        if secret is not None and (not secret.startswith("whsec_") or secret.count("_") != 1):
            raise SettingsError(
                "SDXL_WEBHOOK_SECRET must look like whsec_<base64> (one underscore), as "
                "Replicate's secrets do"
            )
        return cls(
            max_body_bytes=_number(
                environ, "SDXL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024
            ),
            queue_size=_number(environ, "SDXL_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, minimum=0),
            public_url=_public_url(environ.get("SDXL_PUBLIC_URL", "")),
            state_dir=Path(environ.get("SDXL_STATE_DIR") or default_state_dir()),
            database_url=environ.get("SDXL_DATABASE_URL", "").strip() or None,
            prediction_ttl_s=_number(environ, "SDXL_PREDICTION_TTL", 3600.0, 1.0, float),
            max_stored_predictions=_number(environ, "SDXL_MAX_STORED_PREDICTIONS", 10_000, 1),
            max_stored_bytes=size("SDXL_MAX_STORED_BYTES", 10 << 30),
            max_queued_predictions=_number(environ, "SDXL_MAX_QUEUED_PREDICTIONS", 1000, 1),
            models=_models(environ.get("SDXL_REPLICATE_MODELS", GUIDE_MODEL)),
            page_size=_number(environ, "SDXL_PAGE_SIZE", 100, 1),
            webhook_secret=secret,
            replica_timeout_s=_number(environ, "SDXL_REPLICA_TIMEOUT", 30.0, 1.0, float),
        )

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'predictions.db'}"
