"""The kinds of stored jobs, one spelling each."""

from sdxl.settings.checks import CLAIMED_KINDS  # SDXL_JOB_KINDS' values: what a replica claims

__all__ = ["CLAIMED_KINDS", "PREDICTION", "TRAINING"]

PREDICTION, TRAINING = "prediction", "training"  # a stored job's kind (the store's Turn.kind)
