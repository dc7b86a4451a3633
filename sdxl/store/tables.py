"""The store's tables (SQLAlchemy Core), schema version 2: predictions with their outputs and
latest preview, uploaded files, OpenAI's url outputs, the tenants' turns, the replicas'
heartbeats and the server's settings. The bytes of outputs, files and url images are in the
files backend (`sdxl.store.blobs`); a row holds their key and size. Version 1 (before
2026-12) kept them in `data` columns: `sdxl.store.upgrade` moves them."""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

SCHEMA_VERSION = 2


class PredictionStatus(StrEnum):
    """A prediction's status, as Replicate names them."""

    STARTING = "starting"  # queued, or being prepared
    PROCESSING = "processing"  # running
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


QUEUED, RUNNING = PredictionStatus.STARTING, PredictionStatus.PROCESSING
ENDED = (PredictionStatus.SUCCEEDED, PredictionStatus.FAILED, PredictionStatus.CANCELED)

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
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("tenant", sa.String(64)),
    sa.Column("key", sa.String(300)),
)
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


def new_id() -> str:
    """A Replicate-style id: 26 lowercase letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


def new_token() -> str:
    return secrets.token_urlsafe(24)
