"""How tests/data/store-v1.* were made: a prediction store written by the code of commit
92bc4eb (the last one that kept images in the database), through that code's own Store.

    git worktree add /tmp/oldmain 92bc4eb
    python tests/support/make_v1_store.py /tmp/oldmain sqlite:///tests/data/store-v1.sqlite \
        tests/data/store-v1.sqlite.json
    python tests/support/make_v1_store.py /tmp/oldmain postgresql+psycopg://.../v1 \
        tests/data/store-v1-postgresql.json
    pg_dump --no-owner --no-privileges --inserts v1 > tests/data/store-v1-postgresql.sql

Each JSON file says what each stored row is, and the sha256 of every image and file it holds,
for tests/test_store_upgrade.py to find again after the upgrade.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

from PIL import Image


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


def main(old_repo: str, url: str, manifest_path: str) -> None:
    sys.path.insert(0, old_repo)
    from sdxl.api.replicate.store import Store  # the old code's own
    from sdxl.api.settings import StoreLimits

    store = Store(url, StoreLimits(ttl_s=10 * 365 * 86400))  # nothing expires in the fixture
    manifest: dict = {"predictions": {}, "files": {}, "image_urls": {}, "settings": {}}
    for name, value in (("webhook_secret", "whsec_dGVzdGZpeHR1cmU="), ("tenant_salt", "salt1")):
        manifest["settings"][name] = store.setting(name, lambda v=value: v)

    def create(number: int, tenant: str | None, **extra) -> str:
        prediction_id = f"v1prediction{number:014d}"
        store.create(
            {
                "id": prediction_id,
                "model": "stability-ai/sdxl",
                "version": "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
                "input": {"prompt": f"prediction {number}", "width": 256, "height": 256},
                "origin": "http://127.0.0.1:8000",
                "tenant": tenant,
                **extra,
            }
        )
        return prediction_id

    done = create(1, "alice")
    assert store.claim("replica-a")["id"] == done and store.started(done, "replica-a")
    images = [
        ("out-0.png", "image/png", png((200, 10, 10))),
        ("out-1.png", "image/png", png((10, 200, 10))),
    ]
    assert store.finish(
        done,
        "succeeded",
        metrics={"predict_time": 1.5},
        logs="step 1/2\n",
        images=images,
        replica="replica-a",
    )
    failed = create(2, "bob")
    assert store.claim("replica-a")["id"] == failed
    assert store.finish(failed, "failed", error="the job failed on purpose", replica="replica-a")
    queued = create(
        3, "alice", webhook="https://example.com/hook", webhook_events_filter=["completed"]
    )
    old = create(4, None)  # from before tenants
    for prediction_id in (done, failed, queued, old):
        row = store.get(prediction_id)
        outputs = [
            {
                "name": o["name"],
                "content_type": o["content_type"],
                "token": o["token"],
                "sha256": hashlib.sha256(o["data"]).hexdigest(),
            }
            for o in store.outputs_of(prediction_id)
        ]
        manifest["predictions"][prediction_id] = {
            "status": row["status"],
            "tenant": row["tenant"],
            "error": row["error"],
            "outputs": outputs,
        }
    upload = b"plans of alice " * 100
    file = store.add_file("plans.txt", "text/plain", upload, {"kind": "notes"}, "alice")
    manifest["files"][file["id"]] = {
        "name": "plans.txt",
        "tenant": "alice",
        "sha256": hashlib.sha256(upload).hexdigest(),
    }
    image = png((10, 10, 200))
    (token,) = store.add_images([("image.png", "image/png", image)])
    manifest["image_urls"][token] = {
        "name": "image.png",
        "sha256": hashlib.sha256(image).hexdigest(),
    }
    out = Path(manifest_path)
    out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote the store at {url} and {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
