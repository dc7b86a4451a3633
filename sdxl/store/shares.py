"""What each tenant holds of the stored bytes: its predictions' outputs and webhook URLs and its
uploads (Replicate's /v1/files). One tenant's sum reads only its own rows (predictions and
files are indexed by tenant: `tables.FILES_BY_TENANT`), so an upload's check costs what that
tenant holds, never a scan of everyone's; the sums of all tenants are for expiry's rounds.

OpenAI's url images (`image_urls`) have no tenant: they count in the store's total, and the
TTL bounds them.
"""

from __future__ import annotations

import json
import re

import sqlalchemy as sa

from sdxl.store.tables import (
    QUEUED,
    RUNNING,
    files,
    image_urls,
    of_tenant,
    outputs,
    predictions,
    trainings,
)

P = predictions.c
_FILE_PATH = re.compile(r"/v1/files/([a-z0-9]{1,40})")  # as sdxl.runtime.stored_inputs reads


class OverShare(Exception):
    """An upload would put its tenant over its share of the stored bytes."""

    def __init__(self, held: int, size: int, share: int):
        super().__init__(f"{held} bytes held and {size} more would pass the share of {share}")
        self.held, self.size, self.share = held, size, share


def _hook_bytes():
    return sa.func.coalesce(sa.func.sum(sa.func.length(P.webhook)), 0)


def bytes_of(conn: sa.Connection, tenant: str | None) -> int:
    """What `tenant` holds: its outputs, uploads and webhook URLs, in bytes."""
    mine = of_tenant(predictions, tenant)
    held = outputs.join(predictions, outputs.c.prediction_id == P.id)
    total = sa.func.coalesce(sa.func.sum(outputs.c.size), 0)
    return (
        conn.scalar(sa.select(total).select_from(held).where(mine))
        + conn.scalar(sa.select(_hook_bytes()).where(mine))
        + conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(files.c.size), 0)).where(
                of_tenant(files, tenant)
            )
        )
    )


def bytes_by_tenant(conn: sa.Connection) -> dict[str | None, int]:
    """What each tenant holds (as `bytes_of`), of every tenant that holds anything."""
    held: dict[str | None, int] = {}
    joined = outputs.join(predictions, outputs.c.prediction_id == P.id)
    queries = (
        sa.select(P.tenant, sa.func.sum(outputs.c.size)).select_from(joined).group_by(P.tenant),
        sa.select(P.tenant, _hook_bytes()).group_by(P.tenant),
        sa.select(files.c.tenant, sa.func.sum(files.c.size)).group_by(files.c.tenant),
    )
    for query in queries:
        for tenant, size in conn.execute(query):
            held[tenant] = held.get(tenant, 0) + (size or 0)
    return {tenant: size for tenant, size in held.items() if size}


def stored_bytes(conn: sa.Connection) -> int:
    """The store's total: every tenant's outputs, uploads and webhook URLs, and url images."""

    def total(column) -> int:
        return conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(column), 0)))

    hooks = conn.scalar(sa.select(_hook_bytes()))
    return total(outputs.c.size) + total(files.c.size) + total(image_urls.c.size) + hooks


def files_in_use(conn: sa.Connection) -> set[str]:
    """The uploads a queued or running prediction or training names in its input (read when
    it is prepared or runs): kept whatever their age or their tenant's share. At most the
    queued bound's worth of rows."""
    needed: set[str] = set()
    for table in (predictions, trainings):
        inputs = sa.select(table.c.input).where(table.c.status.in_((QUEUED, RUNNING)))
        for given in conn.execute(inputs).scalars():
            needed.update(_FILE_PATH.findall(json.dumps(given)))
    return needed
