"""`python -m sdxl serve`: Cog's own prediction server (coglet) for predict.py:Predictor, run
exactly as a Cog image runs it (no proxy in front: what Cog accepts is what Cog accepts);
`--train` serves train.py's trainer in Cog's train mode instead.

It refuses to start when `.cog/openapi_schema.json` (which coglet validates requests against)
is missing or older than predict.py; it never rewrites that tracked file itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sdxl.config import COG_SCHEMA_FILE

ROOT = Path(__file__).resolve().parents[2]
PREDICTOR = "predict.py:Predictor"
TRAINER = "train.py:train"


class StaleSchema(RuntimeError):
    """The committed schema does not match predict.py."""


def current_schema() -> dict:
    """The schema coglet validates against, checked against predict.py."""
    from sdxl.cog.schema import build_schema

    schema = build_schema(ROOT / "predict.py")
    current = json.loads(COG_SCHEMA_FILE.read_text()) if COG_SCHEMA_FILE.exists() else None
    if current != schema:
        raise StaleSchema(
            f"{COG_SCHEMA_FILE} is missing or out of date with predict.py and train.py; run "
            "`python -m sdxl schema` and commit the result"
        )
    return schema


def serve(host: str, port: int, upload_url: str | None = None, train: bool = False) -> int:
    """Replace this process with coglet serving predict.py (or, `train`, train.py's trainer:
    PUT /trainings/<id>) on host:port."""
    current_schema()
    env = dict(os.environ, COG_PREDICT_TYPE_STUB=PREDICTOR, PORT=str(port))
    # coglet starts its worker as `python` from PATH: make that this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "cog.server.http", "--host", host]
    if train:
        env["COG_TRAIN_TYPE_STUB"] = TRAINER
        cmd += ["--x-mode", "train"]
    if upload_url is not None:
        cmd += ["--upload-url", upload_url]
    served = TRAINER if train else PREDICTOR
    print(f"serving {served} on http://{host}:{port} (coglet)", flush=True)
    os.chdir(ROOT)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
