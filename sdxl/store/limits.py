"""What the store keeps: how long, how much, how many waiting (the operator's settings), and
each tenant's share of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreLimits:
    """What the store keeps of predictions, trainings and files. The per-tenant values are
    resolved when the settings are read (`sdxl.http.server_settings.store_limits`): None is
    no bound of one tenant's own."""

    ttl_s: float = 3600.0  # SDXL_PREDICTION_TTL: kept this long after they end
    max_predictions: int = 10_000  # SDXL_MAX_STORED_PREDICTIONS
    max_bytes: int = 10 << 30  # SDXL_MAX_STORED_BYTES: outputs, files and webhooks together
    max_queued: int = 1000  # SDXL_MAX_QUEUED_PREDICTIONS: waiting predictions
    max_queued_per_tenant: int | None = None  # SDXL_MAX_QUEUED_PER_KEY: of one tenant (None: any)
    max_trainings_per_tenant: int = 2  # SDXL_MAX_TRAININGS_PER_KEY: queued or running, per tenant
    max_bytes_per_tenant: int | None = None  # SDXL_MAX_STORED_BYTES_PER_KEY (None: max_bytes)

    @property
    def tenant_bytes(self) -> int:
        """One tenant's share of the stored bytes."""
        return self.max_bytes if self.max_bytes_per_tenant is None else self.max_bytes_per_tenant
