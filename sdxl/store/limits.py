"""What the store keeps: how long, how much, how many waiting (the operator's settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreLimits:
    """What the store keeps of predictions, trainings and files."""

    ttl_s: float = 3600.0  # SDXL_PREDICTION_TTL: kept this long after they end
    max_predictions: int = 10_000  # SDXL_MAX_STORED_PREDICTIONS
    max_bytes: int = 10 << 30  # SDXL_MAX_STORED_BYTES: outputs and files together
    max_queued: int = 1000  # SDXL_MAX_QUEUED_PREDICTIONS: waiting predictions
    max_queued_per_tenant: int | None = None  # SDXL_MAX_QUEUED_PER_KEY: of one tenant (None: any)
    max_trainings_per_tenant: int = 2  # SDXL_MAX_TRAININGS_PER_KEY: queued or running, per tenant
