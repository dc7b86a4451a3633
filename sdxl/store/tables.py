"""The store's tables (SQLAlchemy Core), schema version 4: predictions with their outputs and
latest preview, uploaded files, OpenAI's url outputs, trainings with the models and versions
they make, the tenants' turns, the replicas' heartbeats and the server's settings. The bytes of
outputs, files, url images, checkpoints and trained weights are in the files backend
(`sdxl.store.blobs`); a row holds their key and size. Version 1 (before 2026-12) kept them in
`data` columns, version 2 had no trainings, version 3 no index of uploads by tenant:
`sdxl.store.upgrade` brings each up."""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

SCHEMA_VERSION = 4


class StoredStatus(StrEnum):
    """A stored job's status (a prediction's or a training's), as Replicate names them."""

    STARTING = "starting"  # queued, or being prepared
    PROCESSING = "processing"  # running
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


QUEUED, RUNNING = StoredStatus.STARTING, StoredStatus.PROCESSING
ENDED = (StoredStatus.SUCCEEDED, StoredStatus.FAILED, StoredStatus.CANCELED)

meta = sa.MetaData()
predictions = sa.Table(
    "predictions",
    meta,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=True),  # FIFO order
    sa.Column("id", sa.String(40), unique=True, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("version", sa.String(200), nullable=False),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("logs", sa.Text, nullable=False, default=""),
    sa.Column("error", sa.Text),
    sa.Column("metrics", sa.JSON),
    sa.Column("output_count", sa.Integer),  # None until it succeeds
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("webhook", sa.Text),
    sa.Column("webhook_events_filter", sa.JSON),
    sa.Column("claimed_by", sa.String(64)),  # the replica preparing or running it
    sa.Column("origin", sa.String(300)),  # the creating request's origin, for its file URLs
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("tenant", sa.String(64), index=True),  # the key's tenant; None: from before them
    sa.Column("claimed_at", sa.Float),  # when a replica took it
)
outputs = sa.Table(
    "outputs",
    meta,
    sa.Column("prediction_id", sa.String(40), primary_key=True),
    sa.Column("index", sa.Integer, primary_key=True),
    sa.Column("token", sa.String(64), unique=True, nullable=False),  # unguessable URL part
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("key", sa.String(300)),  # where its bytes are in the files backend
    sa.Column("size", sa.Integer),
)
files = sa.Table(
    "files",
    meta,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64)),  # the uploader's
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("key", sa.String(300)),
)
# A tenant's uploads, summed at each of its uploads against its share (schema version 4).
FILES_BY_TENANT = sa.Index("ix_files_tenant", files.c.tenant)
previews = sa.Table(  # the latest preview of a running prediction: small, replaced every few
    "previews",  # steps and gone when it ends, so it stays in the database
    meta,
    sa.Column("prediction_id", sa.String(40), primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # JPEG
)
image_urls = sa.Table(  # OpenAI's url outputs: served at /outputs/<token>/<name> until the TTL
    "image_urls",
    meta,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("key", sa.String(300)),
    sa.Column("size", sa.Integer),
)
trainings = sa.Table(  # Replicate's trainings: queued, claimed by one replica, resumed elsewhere
    "trainings",
    meta,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=True),  # FIFO order
    sa.Column("id", sa.String(40), unique=True, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),  # the trained model: owner/name
    sa.Column("version", sa.String(200), nullable=False),  # and its version trained from
    sa.Column("destination", sa.String(200), nullable=False),  # owner/name of the new version
    sa.Column("input", sa.JSON, nullable=False),  # as given (file inputs as URLs)
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("logs", sa.Text, nullable=False, default=""),
    sa.Column("error", sa.Text),
    sa.Column("metrics", sa.JSON),
    sa.Column("output", sa.JSON),  # {"version": "owner/name:id"} once it succeeded
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("webhook", sa.Text),
    sa.Column("webhook_events_filter", sa.JSON),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_at", sa.Float),
    sa.Column("origin", sa.String(300)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("tenant", sa.String(64), index=True),
    sa.Column("step", sa.Integer, nullable=False, default=0),  # training steps done
    sa.Column("input_files", sa.JSON),  # {input: files key}: uploads copied (files expire)
    sa.Column("checkpoint_key", sa.String(300)),  # the latest checkpoint's bytes
    sa.Column("checkpoint_step", sa.Integer),
)
models = sa.Table(  # destinations: a tenant's own models, which trainings add versions to
    "models",
    meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("tenant", sa.String(64), index=True),
    sa.Column("visibility", sa.String(16), nullable=False),
    sa.Column("hardware", sa.String(64), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
)
versions = sa.Table(  # a succeeded training's weights, runnable as owner/name:id
    "versions",
    meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("training_id", sa.String(40), nullable=False),
    sa.Column("weights_key", sa.String(300), nullable=False),  # trained_model.tar
    sa.Column("created_at", sa.Float, nullable=False),
)
tenants = sa.Table(  # when a replica last took a job of each tenant: the turns go by it
    "tenants",
    meta,
    sa.Column("name", sa.String(64), primary_key=True),  # "" for predictions without a tenant
    sa.Column("served_at", sa.Float, nullable=False),
)
replicas = sa.Table(
    "replicas",
    meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("beats", sa.Integer, nullable=False),  # counts up while the replica lives
    sa.Column("seen_at", sa.Float, nullable=False),  # its clock, for people reading the table
)
settings = sa.Table(
    "settings",
    meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

ANY: Any = object()  # a tenant argument: whoever's (the admin key, the engine's own reads)
NO_TENANT = ""  # the tenants table's name for predictions from before tenants


def of_tenant(table: sa.Table, tenant: str | None):
    return table.c.tenant.is_(None) if tenant is None else table.c.tenant == tenant


def owned(query: sa.Select, table: sa.Table, tenant: str | None) -> sa.Select:
    """`query` kept to `tenant`'s rows of `table` (ANY: whoever's)."""
    return query if tenant is ANY else query.where(of_tenant(table, tenant))


def unclaimed(table: sa.Table) -> list:
    """The rows of `table` (predictions or trainings) queued that no replica has claimed."""
    return [table.c.status == QUEUED, table.c.claimed_by.is_(None)]


def new_id() -> str:
    """A Replicate-style id: 26 lowercase letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


def new_token() -> str:
    return secrets.token_urlsafe(24)
