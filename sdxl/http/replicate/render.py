"""Replicate's JSON objects: a prediction (with its output URLs), a training (with its weights'
or, stopped early, its checkpoint's URL), an uploaded file."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from sdxl.runtime.stored_trainings import CHECKPOINT_PATH
from sdxl.store.store import Store
from sdxl.store.training_rows import STOPPED


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Renderer:
    """Renders stored rows; `public_url` (SDXL_PUBLIC_URL) makes outputs URLs under it."""

    def __init__(self, store: Store, public_url: str | None, ttl_s: float):
        self.store = store
        self.public_url = public_url
        self.ttl_s = ttl_s

    def prediction(self, row: dict, base: str, status: str | None = None) -> dict:
        """Replicate's prediction object; `status` overrides the stored one (a wait that ran
        out answers "starting", as Replicate does, so that the clients go on polling)."""
        output = None
        if row["status"] == "succeeded":
            output = [self.output_uri(o) for o in self.store.predictions.outputs_of(row["id"])]
        rendered = _job(row, f"{base}/v1/predictions", output)
        if status is not None:
            rendered["status"] = status
        return {**rendered, "data_removed": False}

    def output_uri(self, output: dict) -> str:
        if self.public_url:
            return f"{self.public_url}/outputs/{output['token']}/{output['name']}"
        payload = base64.b64encode(self.store.blobs.read(output["key"])).decode("ascii")
        return f"data:{output['content_type']};base64,{payload}"

    def file(self, row: dict, base: str) -> dict:
        return {
            "id": row["id"],
            "name": row["name"],
            "content_type": row["content_type"],
            "size": row["size"],
            "etag": row["sha256"],
            "checksums": {"sha256": row["sha256"]},
            "metadata": row["metadata"],
            "created_at": iso(row["created_at"]),
            "expires_at": iso(row["created_at"] + self.ttl_s),
            "urls": {"get": f"{base}/v1/files/{row['id']}"},
        }

    def training(self, row: dict, base: str) -> dict:
        """Replicate's training object; its output's `weights` is served by this server (with
        the caller's key: GET /v1/trainings/<id>/weights); a training cancelled or failed after
        a step has `output.checkpoint` instead (GET /v1/trainings/<id>/checkpoint, likewise),
        which `resume_from_checkpoint` takes."""
        base = self.public_url or base
        output = None
        if row["status"] == "succeeded" and row["output"]:
            output = {**row["output"], "weights": f"{base}/v1/trainings/{row['id']}/weights"}
        elif row["status"] in STOPPED and row.get("checkpoint_key"):
            output = {"checkpoint": base + CHECKPOINT_PATH.format(row["id"])}
        rendered = _job(row, f"{base}/v1/trainings", output)
        return {**rendered, "destination": row["destination"]}


def _job(row: dict, collection: str, output) -> dict:
    """What a prediction and a training object share."""
    return {
        "id": row["id"],
        "model": row["model"],
        "version": row["version"],
        "input": row["input"],
        "output": output,
        "logs": row["logs"],
        "error": row["error"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
        "urls": {"get": f"{collection}/{row['id']}", "cancel": f"{collection}/{row['id']}/cancel"},
        "metrics": row["metrics"] or {},
        "source": "api",
    }
