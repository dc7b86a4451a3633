"""The store every API and the engine's shared queue use: predictions, trainings, destination
models and their versions, files and the replicas' rows in a database (SQLite in
SDXL_STATE_DIR by default, or SDXL_DATABASE_URL: on PostgreSQL any number of replicas share
it), the bytes of images, uploads, checkpoints and trained weights in a files backend
(SDXL_FILES_DIR), and wake-ups instead of polling.

Opening it upgrades an older database in place (`sdxl.store.upgrade`) and checks that the
files folder is this database's: on a shared database every replica must mount the same one.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import sqlalchemy as sa

from sdxl.store.blobs import Blobs, FilesError
from sdxl.store.db import Database
from sdxl.store.destinations import Destinations
from sdxl.store.expiry import Expiry
from sdxl.store.files import Files
from sdxl.store.prediction_rows import Predictions
from sdxl.store.replica_rows import ReplicaRows
from sdxl.store.tables import files, image_urls, outputs, settings
from sdxl.store.training_rows import Trainings
from sdxl.store.upgrade import upgrade
from sdxl.store.wake import Wakeups

log = logging.getLogger("sdxl.store")


class Store:
    def __init__(self, url: str, files_dir: Path, limits):
        """`limits`: sdxl.store.limits.StoreLimits (TTL, bounds, queued caps)."""
        self.db = Database(url)
        self.blobs = Blobs(files_dir)
        self.limits = limits
        self.blobs.open()
        self.upgraded_from = upgrade(self.db, self.blobs)
        self._check_files_folder()
        self.predictions = Predictions(self.db, self.blobs, limits)
        self.trainings = Trainings(self.db, self.blobs, limits.max_trainings_per_tenant)
        self.destinations = Destinations(self.db, self.blobs)
        self.files = Files(self.db, self.blobs)
        self.replicas = ReplicaRows(self.db, self.predictions, self.trainings)
        self.expiry = Expiry(self.db, self.blobs, limits)
        self.wakeups = Wakeups(self.db)

    @property
    def shared(self) -> bool:
        """Whether other replicas use the same database."""
        return self.db.shared

    @property
    def url(self) -> str:
        return self.db.url

    def ping(self) -> None:
        self.db.ping()

    def expire(self, now: float | None = None) -> int:
        return self.expiry.expire(now)

    def setting(self, name: str, make) -> str:
        """The stored value of `name`, made with `make()` and stored the first time."""
        query = sa.select(settings.c.value).where(settings.c.name == name)
        try:
            with self.db.tx() as conn:
                value = conn.scalar(query)
                if value is None:
                    value = make()
                    conn.execute(settings.insert().values(name=name, value=value))
        except sa.exc.IntegrityError:  # another replica stored it first: use theirs
            with self.db.read() as conn:
                value = conn.scalar(query)
        return value

    def close(self) -> None:
        self.wakeups.close()
        self.db.close()

    def _check_files_folder(self) -> None:
        """The files folder holds this database's files, or is new and the database has none
        yet; anything else is a folder another database wrote, or a replica that does not
        mount the shared volume."""
        made = secrets.token_hex(8)
        store_id = self.setting("store_id", lambda: made)
        found = self.blobs.marker()
        if found == store_id:
            return
        if found is None and (store_id == made or not self._holds_files()):
            self.blobs.mark(store_id)
            return
        where = f"{self.blobs.root} (SDXL_FILES_DIR)"
        raise FilesError(
            f"{where} is not the folder this database's files are in "
            f"({'it belongs to another database' if found else 'it lacks them'}); on a shared "
            "database every replica must mount the same folder (a ReadWriteMany volume)"
        )

    def _holds_files(self) -> bool:
        with self.db.read() as conn:
            for table in (outputs, files, image_urls):
                if conn.scalar(sa.select(sa.func.count()).select_from(table)):
                    return True
        return False
