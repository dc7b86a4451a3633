"""The API server's settings, built from the settings tree's HTTP and store groups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdxl.settings.checks import CLAIMED_KINDS, GUIDE_MODEL
from sdxl.settings.store_group import StoreGroup, default_state_dir, half
from sdxl.settings.tree import HttpGroup
from sdxl.store.limits import StoreLimits

__all__ = ["GUIDE_MODEL", "Settings", "default_state_dir", "half", "store_limits", "tenant_count"]

# Declared once, in the settings tree: 20 MiB (room for a large base64 seed_image), 256 MiB
# (Replicate's /v1/files, a photo zip), 8 jobs
DEFAULT_MAX_BODY_BYTES = HttpGroup.model_fields["max_body_bytes"].default
DEFAULT_MAX_UPLOAD_BYTES = HttpGroup.model_fields["max_upload_bytes"].default
DEFAULT_QUEUE_SIZE = HttpGroup.model_fields["queue_size"].default
LOADING_RETRY_AFTER_S = 10
DRAINING_RETRY_AFTER_S = 5
STORE_RETRY_AFTER_S = 5  # the prediction store's database is away (a restart takes seconds)
DISK_FULL_RETRY_AFTER_S = 60  # its disk is full: an operator has to free space
PREVIEW_EVERY = 5  # steps between the previews of the live views (playground, A1111's progress)


def tenant_count(entries) -> int:
    """How many tenants the API keys `entries` (sdxl.http.auth.KeyEntry; the admin key's
    among them) name: one a name, one a key given without a name."""
    return len({(entry.name is None, entry.name or entry.key) for entry in entries})


def store_limits(env: Mapping[str, str], tenants: int = 1) -> StoreLimits:
    """The store's limits from SDXL_PREDICTION_TTL, SDXL_MAX_STORED_* and SDXL_MAX_QUEUED_*,
    with each of several `tenants`' default shares (`StoreGroup.limits`)."""
    return StoreGroup.read(env).limits(tenants)


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
    def from_groups(cls, http: HttpGroup, store: StoreGroup, tenants: int = 1) -> Settings:
        """From the settings tree's groups. `tenants`: how many the API keys name
        (`tenant_count`); with several, one key's default share of the queues and of the stored
        bytes is a part of the whole."""
        per_key = http.queue_size_per_key
        if per_key is None and tenants > 1:
            per_key = half(http.queue_size)
        return cls(
            max_body_bytes=http.max_body_bytes,
            max_upload_bytes=http.max_upload_bytes,
            queue_size=http.queue_size,
            queue_size_per_key=per_key,
            public_url=http.public_url,
            state_dir=store.state_dir,
            database_url=store.database_url,
            files_dir=store.files_dir,
            store=store.limits(tenants),
            served_names=http.served_names,
            page_size=http.page_size,
            webhook_secret=http.webhook_secret,
            replica_timeout_s=store.replica_timeout_s,
            store_poll_s=store.store_poll_s,
            job_kinds=store.job_kinds,
            model_name=http.model_name,
            model_aliases=http.model_aliases,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], tenants: int = 1) -> Settings:
        return cls.from_groups(HttpGroup.read(environ), StoreGroup.read(environ), tenants)

    @property
    def files_folder(self) -> Path:
        return self.files_dir or self.state_dir / "files"

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'predictions.db'}"
