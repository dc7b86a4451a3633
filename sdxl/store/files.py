"""Files the server keeps for a while: uploads (Replicate's /v1/files, read as inputs) and the
images of OpenAI's url outputs. Rows in the database, bytes in the files backend, written
before the row names them."""

from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.tables import ANY, files, image_urls, new_id, new_token, owned


class Files:
    def __init__(self, db: Database, blobs: Blobs):
        self.db = db
        self.blobs = blobs

    # ---- uploads ----------------------------------------------------------------------------
    def add(self, name: str, content_type: str, data: bytes, metadata: dict, tenant: str | None):
        row = {
            "id": new_id(),
            "tenant": tenant,
            "name": name,
            "content_type": content_type,
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": metadata,
            "created_at": time.time(),
        }
        row["key"] = f"files/{row['id']}"
        row["size"] = self.blobs.put(row["key"], data)
        try:
            with self.db.tx() as conn:
                conn.execute(files.insert().values(**row))
        except BaseException:
            self.blobs.delete([row["key"]])
            raise
        return row

    def get(self, file_id: str, tenant: str | None = ANY) -> dict | None:
        """The upload, if it is `tenant`'s (ANY: whoever's)."""
        return self.db.first(owned(sa.select(files).where(files.c.id == file_id), files, tenant))

    def data(self, file_id: str, tenant: str | None = ANY) -> bytes | None:
        """The upload's bytes, if it is `tenant`'s and still kept."""
        row = self.get(file_id, tenant)
        if row is None or not self.blobs.exists(row["key"]):
            return None
        return self.blobs.read(row["key"])

    # ---- images served by URL ---------------------------------------------------------------
    def add_images(self, images: list[tuple[str, str, bytes]]) -> list[str]:
        """Store images (name, content type, bytes) to be served by URL; their tokens."""
        rows = []
        for name, kind, data in images:
            token = new_token()
            key = f"urls/{token}-{name}"
            size = self.blobs.put(key, data)
            rows.append(
                {"token": token, "name": name, "content_type": kind, "key": key, "size": size}
            )
        try:
            with self.db.tx() as conn:
                for row in rows:
                    conn.execute(image_urls.insert().values(**row, created_at=time.time()))
        except BaseException:
            self.blobs.delete(row["key"] for row in rows)
            raise
        return [row["token"] for row in rows]

    def image_by_token(self, token: str) -> dict | None:
        return self.db.first(sa.select(image_urls).where(image_urls.c.token == token))
