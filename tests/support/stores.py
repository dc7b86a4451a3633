"""A store for trainings' tests: SQLite in a test's folder, with alice's destination model."""

from __future__ import annotations

from pathlib import Path

from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store


def store_with_destination(folder: Path) -> Store:
    """A new store in `folder` where alice owns the destination model alice/m."""
    opened = Store(f"sqlite:///{folder / 'store.db'}", folder / "files", StoreLimits())
    opened.destinations.create(
        dict(owner="alice", name="m", tenant="alice", visibility="private", hardware="gpu")
    )
    return opened
