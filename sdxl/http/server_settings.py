"""The API server's settings, read from the environment once at startup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sdxl.runtime.kinds import CLAIMED_KINDS
from sdxl.settings import SettingsError, env_number, parse_size
from sdxl.store.limits import StoreLimits

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024  # 20 MiB: room for a large base64 seed_image
DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # 256 MiB: Replicate's /v1/files (a photo zip)
DEFAULT_QUEUE_SIZE = 8
LOADING_RETRY_AFTER_S = 10
DRAINING_RETRY_AFTER_S = 5
STORE_RETRY_AFTER_S = 5  # the prediction store's database is away (a restart takes seconds)
DISK_FULL_RETRY_AFTER_S = 60  # its disk is full: an operator has to free space
PREVIEW_EVERY = 5  # steps between the previews of the live views (playground, A1111's progress)
# The model the Replicate guide calls, with the version id it uses.
GUIDE_MODEL = "stability-ai/sdxl:39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


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


def _served_names(raw: str) -> tuple[str, ...]:
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


def _model_name(raw: str, variable: str) -> str:
    name = raw.strip()
    if not name or "/" in name or not name.isprintable() or " " in name:
        raise SettingsError(
            f"{variable} has {raw!r}; a model name is one word without '/' (e.g. sdxl)"
        )
    return name


def _files_dir(environ: Mapping[str, str]) -> Path | None:
    raw = environ.get("SDXL_FILES_DIR", "").strip()
    shared = environ.get("SDXL_DATABASE_URL", "").strip().startswith(("postgresql", "mysql"))
    if not raw and shared:
        raise SettingsError(
            "SDXL_DATABASE_URL names a database replicas share, so they must share the files "
            "too: set SDXL_FILES_DIR to a folder every replica mounts (a ReadWriteMany volume "
            "on Kubernetes)"
        )
    return Path(raw) if raw else None


def _job_kinds(raw: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    wrong = [kind for kind in kinds if kind not in CLAIMED_KINDS]
    if wrong or not kinds:
        raise SettingsError(
            f"SDXL_JOB_KINDS={raw!r}: list what this replica takes from the shared queue, "
            "predictions, trainings or both (predictions,trainings)"
        )
    return kinds


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sdxl-cog"


def tenant_count(entries) -> int:
    """How many tenants the API keys `entries` (sdxl.http.auth.KeyEntry; the admin key's
    among them) name: one a name, one a key given without a name."""
    return len({(entry.name is None, entry.name or entry.key) for entry in entries})


def half(total: int) -> int:
    """One key's default share of a queue of `total` with several keys: half, rounded up."""
    return -(-total // 2)


def store_limits(env: Mapping[str, str], tenants: int = 1) -> StoreLimits:
    """The store's limits from SDXL_PREDICTION_TTL, SDXL_MAX_STORED_* and SDXL_MAX_QUEUED_*.
    With several `tenants` (API keys' tenants), each gets by default half of the queue and an
    equal part of the stored bytes: shares that add up to the whole, so a tenant within its own
    never loses a prediction or file to another's use."""
    defaults = StoreLimits
    max_bytes = env_number(env, "SDXL_MAX_STORED_BYTES", parse_size, 1, defaults.max_bytes)
    max_queued = env_number(env, "SDXL_MAX_QUEUED_PREDICTIONS", int, 1, defaults.max_queued)
    several = tenants > 1
    return StoreLimits(
        ttl_s=env_number(env, "SDXL_PREDICTION_TTL", float, 1.0, defaults.ttl_s),
        max_predictions=env_number(
            env, "SDXL_MAX_STORED_PREDICTIONS", int, 1, defaults.max_predictions
        ),
        max_bytes=max_bytes,
        max_queued=max_queued,
        max_queued_per_tenant=env_number(
            env, "SDXL_MAX_QUEUED_PER_KEY", int, 1, half(max_queued) if several else None
        ),
        max_trainings_per_tenant=env_number(
            env, "SDXL_MAX_TRAININGS_PER_KEY", int, 1, defaults.max_trainings_per_tenant
        ),
        max_bytes_per_tenant=env_number(
            env,
            "SDXL_MAX_STORED_BYTES_PER_KEY",
            parse_size,
            1,
            max_bytes // tenants if several else None,
        ),
    )


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # SDXL_MAX_UPLOAD_BYTES: one /v1/files body
    queue_size: int = DEFAULT_QUEUE_SIZE  # the synchronous APIs' jobs that may wait for the GPU
    # SDXL_QUEUE_SIZE_PER_KEY: of one key's (None: any; several keys: half of queue_size)
    queue_size_per_key: int | None = None
    public_url: str | None = None  # SDXL_PUBLIC_URL: the origin of every URL the API returns
    state_dir: Path = field(default_factory=default_state_dir)  # SDXL_STATE_DIR
    database_url: str | None = None  # SDXL_DATABASE_URL (default: SQLite in state_dir)
    # SDXL_FILES_DIR: the bytes of outputs and uploads (default: state_dir/files); with a shared
    # database, a folder every replica mounts (a ReadWriteMany volume)
    files_dir: Path | None = None
    store: StoreLimits = field(default_factory=StoreLimits)  # SDXL_PREDICTION_TTL, ...
    served_names: tuple[str, ...] = (GUIDE_MODEL,)  # SDXL_REPLICATE_MODELS: owner/name[:version]
    page_size: int = 100  # SDXL_PAGE_SIZE: predictions per page of GET /v1/predictions
    webhook_secret: str | None = None  # SDXL_WEBHOOK_SECRET (default: made once, stored)
    # SDXL_REPLICA_TIMEOUT: on a shared database, a replica silent this long is dead
    replica_timeout_s: float = 30.0
    # SDXL_STORE_POLL_S: replicas wake when the store changes (LISTEN/NOTIFY on PostgreSQL);
    # without a wake-up they look at it this often all the same (a safety net)
    store_poll_s: float = 5.0
    # SDXL_JOB_KINDS: what this replica claims from the store's queue (a serving pool and a
    # training pool on one database); its synchronous APIs answer whatever it is sent
    job_kinds: tuple[str, ...] = CLAIMED_KINDS
    # SDXL_MODEL_NAME: the served model's id on OpenAI's and AUTOMATIC1111's APIs (no "/")
    model_name: str = "sdxl"
    # SDXL_MODEL_ALIASES: other names accepted for it, for front-ends that cannot change theirs
    model_aliases: tuple[str, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.model_aliases)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], tenants: int = 1) -> Settings:
        """`tenants`: how many the API keys name (`tenant_count`); with several, one key's
        default share of the queues and of the stored bytes is a part of the whole."""
        secret = environ.get("SDXL_WEBHOOK_SECRET", "").strip() or None
        if secret is not None and (not secret.startswith("whsec_") or secret.count("_") != 1):
            raise SettingsError(
                "SDXL_WEBHOOK_SECRET must look like whsec_<base64> (one underscore), as "
                "Replicate's secrets do"
            )
        queue_size = env_number(environ, "SDXL_QUEUE_SIZE", int, 0, DEFAULT_QUEUE_SIZE)
        return cls(
            max_body_bytes=env_number(
                environ, "SDXL_MAX_BODY_BYTES", int, 1024, DEFAULT_MAX_BODY_BYTES
            ),
            max_upload_bytes=env_number(
                environ, "SDXL_MAX_UPLOAD_BYTES", parse_size, 1024, DEFAULT_MAX_UPLOAD_BYTES
            ),
            queue_size=queue_size,
            queue_size_per_key=env_number(
                environ,
                "SDXL_QUEUE_SIZE_PER_KEY",
                int,
                0,
                half(queue_size) if tenants > 1 else None,
            ),
            public_url=_public_url(environ.get("SDXL_PUBLIC_URL", "")),
            state_dir=Path(environ.get("SDXL_STATE_DIR") or default_state_dir()),
            database_url=environ.get("SDXL_DATABASE_URL", "").strip() or None,
            files_dir=_files_dir(environ),
            store=store_limits(environ, tenants),
            served_names=_served_names(environ.get("SDXL_REPLICATE_MODELS", GUIDE_MODEL)),
            page_size=env_number(environ, "SDXL_PAGE_SIZE", int, 1, 100),
            webhook_secret=secret,
            replica_timeout_s=env_number(environ, "SDXL_REPLICA_TIMEOUT", float, 1.0, 30.0),
            store_poll_s=env_number(environ, "SDXL_STORE_POLL_S", float, 0.1, cls.store_poll_s),
            job_kinds=_job_kinds(environ.get("SDXL_JOB_KINDS", ",".join(CLAIMED_KINDS))),
            model_name=_model_name(environ.get("SDXL_MODEL_NAME", "sdxl"), "SDXL_MODEL_NAME"),
            model_aliases=tuple(
                _model_name(name, "SDXL_MODEL_ALIASES")
                for name in environ.get("SDXL_MODEL_ALIASES", "").split(",")
                if name.strip()
            ),
        )

    @property
    def files_folder(self) -> Path:
        return self.files_dir or self.state_dir / "files"

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'predictions.db'}"
