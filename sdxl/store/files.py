"""Files the server keeps for a while: uploads (Replicate's /v1/files, read as inputs) and the
images of OpenAI's url outputs. Rows in the database, bytes in the files backend, written
before the row names them. An upload is copied to the files backend in chunks (never whole in
memory), its size and sha256 counted on the way, and refused (OverShare) as soon as it would put
its tenant over its share of the stored bytes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import BinaryIO

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.shares import OverShare, bytes_of
from sdxl.store.tables import ANY, files, image_urls, new_id, new_token, owned

CHUNK = 1 << 20  # bytes read and written at a time


class Files:
    def __init__(self, db: Database, blobs: Blobs):
        self.db = db
        self.blobs = blobs

    # ---- uploads ----------------------------------------------------------------------------
    def add(
        self,
        name: str,
        content_type: str,
        source: BinaryIO,
        metadata: dict,
        tenant: str | None,
        share: int | None = None,
    ) -> dict:
        """Keep the upload read from `source`; OverShare when it would put `tenant` over
        `share` bytes (None: no share), its partial copy removed."""
        row = {
            "id": new_id(),
            "tenant": tenant,
            "name": name,
            "content_type": content_type,
            "metadata": metadata,
            "created_at": time.time(),
        }
        row["key"] = f"files/{row['id']}"
        held = None if share is None else self.held(tenant)
        digest = hashlib.sha256()
        row["size"] = self.blobs.put_chunks(row["key"], _counted(source, digest, held, share))
        row["sha256"] = digest.hexdigest()
        try:
            with self.db.tx() as conn:
                if share is not None:  # again: its other uploads or outputs may have come meanwhile
                    held = bytes_of(conn, tenant)
                    if held + row["size"] > share:
                        raise OverShare(held, row["size"], share)
                conn.execute(files.insert().values(**row))
        except BaseException:
            self.blobs.delete([row["key"]])
            raise
        return row

    def held(self, tenant: str | None) -> int:
        """What `tenant` holds of the stored bytes (`sdxl.store.shares.bytes_of`)."""
        with self.db.read() as conn:
            return bytes_of(conn, tenant)

    def delete(self, file_id: str, tenant: str | None = ANY) -> bool:
        """Remove the upload, if it is `tenant`'s; whether there was one."""
        query = owned(sa.select(files.c.key).where(files.c.id == file_id), files, tenant)
        with self.db.tx() as conn:
            found = conn.execute(query).first()
            if found is None:
                return False
            conn.execute(files.delete().where(files.c.id == file_id))
        self.blobs.delete([found.key])  # after the row: no row names a file that is gone
        return True

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


def _counted(source: BinaryIO, digest, held: int | None, share: int | None) -> Iterator[bytes]:
    """`source`'s chunks, hashed into `digest`; OverShare once they pass `share - held`."""
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if share is not None and held + size > share:
            raise OverShare(held, size, share)
        digest.update(chunk)
        yield chunk
