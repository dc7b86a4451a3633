"""Destination models (a tenant's own, made with POST /v1/models) and their versions, each the
weights of one succeeded training (its trained_model.tar in the files backend)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from sdxl.store.blobs import Blobs
from sdxl.store.db import Database
from sdxl.store.tables import ANY, models, of_tenant, versions


class Destinations:
    def __init__(self, db: Database, blobs: Blobs):
        self.db = db
        self.blobs = blobs

    def create(self, row: dict) -> dict | None:
        """The new model, or None when owner/name is taken."""
        with self.db.tx() as conn:
            taken = conn.scalar(
                sa.select(sa.func.count()).where(
                    models.c.owner == row["owner"], models.c.name == row["name"]
                )
            )
            if taken:
                return None
            conn.execute(models.insert().values(**row, created_at=time.time()))
        return self.get(row["owner"], row["name"])

    def get(self, owner: str, name: str, tenant: str | None = ANY) -> dict | None:
        query = sa.select(models).where(models.c.owner == owner, models.c.name == name)
        if tenant is not ANY:
            query = query.where(of_tenant(models, tenant))
        with self.db.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def of(self, tenant: str | None = ANY) -> list[dict]:
        query = sa.select(models).order_by(models.c.created_at)
        if tenant is not ANY:
            query = query.where(of_tenant(models, tenant))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def versions(self, owner: str, name: str) -> list[dict]:
        """Newest first."""
        query = (
            sa.select(versions)
            .where(versions.c.owner == owner, versions.c.name == name)
            .order_by(versions.c.created_at.desc())
        )
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def version(self, owner: str, name: str, version_id: str) -> dict | None:
        query = sa.select(versions).where(
            versions.c.owner == owner, versions.c.name == name, versions.c.id == version_id
        )
        with self.db.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def find_version(self, text: str, tenant: str | None = ANY) -> dict | None:
        """The version `text` names (its id, or owner/name:id), with its model's owner and name,
        if the model is `tenant`'s (ANY: whoever's)."""
        named, _, version_id = text.rpartition(":")
        query = sa.select(versions).join(
            models, sa.and_(models.c.owner == versions.c.owner, models.c.name == versions.c.name)
        )
        query = query.where(versions.c.id == version_id)
        if named:
            owner, _, name = named.partition("/")
            query = query.where(versions.c.owner == owner, versions.c.name == name)
        if tenant is not ANY:
            query = query.where(of_tenant(models, tenant))
        with self.db.read() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def latest(self, owner: str, name: str) -> dict | None:
        found = self.versions(owner, name)
        return found[0] if found else None
