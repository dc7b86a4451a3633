"""What the operator sets for every training (read once, from the settings tree). No torch
here: the API server builds these before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdxl.train.archive import ArchiveLimits


@dataclass(frozen=True)
class TrainSettings:
    """What the operator sets for every training, read from the environment once."""

    archive: ArchiveLimits = field(default_factory=ArchiveLimits)  # SDXL_MAX_TRAIN_IMAGES, ...
    gradient_checkpointing: str = "auto"  # SDXL_TRAIN_GRADIENT_CHECKPOINTING: auto (CUDA), 1, 0

    @classmethod
    def from_group(cls, train) -> TrainSettings:
        """From the settings tree's `TrainGroup` (`sdxl.settings.tree`)."""
        archive = ArchiveLimits(max_images=train.max_images, max_bytes=train.max_bytes)
        return cls(archive=archive, gradient_checkpointing=train.gradient_checkpointing)

    @classmethod
    def from_env(cls, env=None) -> TrainSettings:
        from sdxl.settings.tree import TrainGroup

        return cls.from_group(TrainGroup.read(env))
