"""The store's settings: where predictions, trainings and files are kept, how long and how
many, and how the replicas of one database share the work."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from sdxl.settings import SettingsError, checks
from sdxl.settings.specs import Folder, Group, Number, Text, seconds, setting, size
from sdxl.store.limits import StoreLimits

Int = int | None


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sdxl-cog"


def half(total: int) -> int:
    """One key's default share of a queue of `total` with several keys: half, rounded up."""
    return -(-total // 2)


class StoreGroup(Group):
    TITLE = "Store"
    state_dir: Annotated[Path, Folder()] = setting(
        "SDXL_STATE_DIR",
        default_state_dir,
        "the state folder (SQLite database, files)",
        shown="$XDG_STATE_HOME/sdxl-cog (~/.local/state/sdxl-cog)",
    )
    database_url: Annotated[
        str | None, Text(mask=checks.masked_url, kind="URL (password masked)")
    ] = setting("SDXL_DATABASE_URL", None, "a database URL (unset: SQLite in the state folder)")
    files_dir: Annotated[Path | None, Folder(strip=True)] = setting(
        "SDXL_FILES_DIR", None, "outputs' and uploads' bytes (unset: <state>/files)"
    )
    ttl_s: Annotated[float, seconds(1.0)] = setting(
        "SDXL_PREDICTION_TTL", 3600.0, "seconds an ended prediction, upload or url image is kept"
    )
    max_predictions: Annotated[int, Number(int, 1)] = setting(
        "SDXL_MAX_STORED_PREDICTIONS", 10_000, "stored predictions, all tenants"
    )
    max_bytes: Annotated[int, size()] = setting(
        "SDXL_MAX_STORED_BYTES", 10 << 30, "stored bytes (outputs, uploads, webhook URLs)"
    )
    max_bytes_per_tenant: Annotated[Int, size()] = setting(
        "SDXL_MAX_STORED_BYTES_PER_KEY", None, "of one tenant (unset: an equal share)"
    )
    max_queued: Annotated[int, Number(int, 1)] = setting(
        "SDXL_MAX_QUEUED_PREDICTIONS", 1000, "stored predictions queued, all tenants"
    )
    max_queued_per_tenant: Annotated[Int, Number(int, 1)] = setting(
        "SDXL_MAX_QUEUED_PER_KEY", None, "of one tenant (unset: half with several tenants)"
    )
    max_trainings_per_tenant: Annotated[int, Number(int, 1)] = setting(
        "SDXL_MAX_TRAININGS_PER_KEY", 2, "trainings queued or running, per tenant"
    )
    replica_timeout_s: Annotated[float, seconds(1.0)] = setting(
        "SDXL_REPLICA_TIMEOUT", 30.0, "seconds after which a silent replica is dead"
    )
    store_poll_s: Annotated[float, seconds(0.1)] = setting(
        "SDXL_STORE_POLL_S", 5.0, "seconds between looks at the store without a wake-up"
    )
    job_kinds: Annotated[
        tuple[str, ...],
        Text(checks.job_kinds, ",".join(checks.CLAIMED_KINDS), kind="kinds, comma-separated"),
    ] = setting(
        "SDXL_JOB_KINDS", checks.CLAIMED_KINDS, "what this replica claims: predictions, trainings"
    )

    @classmethod
    def check(cls, env: Mapping[str, str]) -> None:
        shared = env.get("SDXL_DATABASE_URL", "").strip().startswith(("postgresql", "mysql"))
        if shared and not env.get("SDXL_FILES_DIR", "").strip():
            raise SettingsError(
                "SDXL_DATABASE_URL names a database replicas share, so they must share the "
                "files too: set SDXL_FILES_DIR to a folder every replica mounts (a "
                "ReadWriteMany volume on Kubernetes)"
            )

    def limits(self, tenants: int = 1) -> StoreLimits:
        """With several `tenants` (API keys' tenants), each gets by default half of the queue
        and an equal part of the stored bytes: shares that add up to the whole, so a tenant
        within its own never loses a prediction or file to another's use."""
        several = tenants > 1
        queued = self.max_queued_per_tenant
        per_bytes = self.max_bytes_per_tenant
        return StoreLimits(
            ttl_s=self.ttl_s,
            max_predictions=self.max_predictions,
            max_bytes=self.max_bytes,
            max_queued=self.max_queued,
            max_queued_per_tenant=queued or (half(self.max_queued) if several else None),
            max_trainings_per_tenant=self.max_trainings_per_tenant,
            max_bytes_per_tenant=per_bytes or (self.max_bytes // tenants if several else None),
        )
