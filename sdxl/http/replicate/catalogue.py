"""The models and versions this server answers for, as Replicate describes them.

Each model listed in SDXL_REPLICATE_MODELS (default: the guide's `stability-ai/sdxl` and its
version id) also has the server's own version: a digest of the predictor's schema, so that it
changes exactly when the inputs or outputs do. A tenant's destination models (made with
POST /v1/models) have one version per succeeded training, with the same inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

from sdxl.config import COG_SCHEMA_FILE
from sdxl.http.caps import cog_schema_with_caps
from sdxl.http.replicate.inputs import REPLICATE
from sdxl.http.replicate.render import iso
from sdxl.settings import Caps

COG_VERSION = "0.23.1"
CREATED_AT = "2023-07-26T00:00:00.000000Z"  # when the guide's version was published


@dataclass(frozen=True)
class Version:
    id: str
    model: str  # owner/name

    def to_json(self, schema: dict) -> dict:
        return {
            "id": self.id,
            "created_at": CREATED_AT,
            "cog_version": COG_VERSION,
            "openapi_schema": schema,
        }


class Catalogue:
    def __init__(self, names: tuple[str, ...], caps: Caps):
        self.names = names
        self.caps = caps

    @cached_property
    def predictor_schema(self) -> dict:
        return json.loads(COG_SCHEMA_FILE.read_text())

    @cached_property
    def schema(self) -> dict:
        """The schema versions publish: the predictor's, with this server's caps."""
        return cog_schema_with_caps(self.predictor_schema, self.caps, REPLICATE)

    @cached_property
    def own_version(self) -> str:
        canonical = json.dumps(self.predictor_schema, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @cached_property
    def served(self) -> dict[str, list[str]]:
        """owner/name -> version ids, the server's own last (the latest)."""
        found: dict[str, list[str]] = {}
        for name in self.names:
            model, _, version = name.partition(":")
            versions = found.setdefault(model, [])
            if version and version not in versions:
                versions.append(version)
        for versions in found.values():
            if self.own_version not in versions:
                versions.append(self.own_version)
        return found

    def model(self, owner: str, name: str) -> str | None:
        key = f"{owner}/{name}"
        return key if key in self.served else None

    def version(self, text: str, model: str | None = None) -> Version | None:
        """The version `text` names (an id, or owner/name:id), of `model` when given."""
        named_model, _, version_id = text.rpartition(":")
        candidates = [named_model] if named_model else [model] if model else list(self.served)
        for candidate in candidates:
            if version_id in self.served.get(candidate, ()):
                return Version(version_id, candidate)
        return None

    def latest(self, model: str) -> Version:
        return Version(self.served[model][-1], model)

    def model_json(self, model: str, base: str) -> dict:
        owner, name = model.split("/")
        return {
            "url": f"{base}/{model}",
            "owner": owner,
            "name": name,
            "description": "Stable Diffusion XL 1.0 (base and refiner), served by this server",
            "visibility": "public",
            "github_url": None,
            "paper_url": "https://arxiv.org/abs/2307.01952",
            "license_url": "https://github.com/Stability-AI/generative-models/blob/main/model_licenses/LICENSE-SDXL1.0",
            "run_count": 0,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": self.latest(model).to_json(self.schema),
        }

    def trained_version_json(self, row: dict) -> dict:
        """A destination's version (a store row): the served inputs, its own weights."""
        return {
            "id": row["id"],
            "created_at": iso(row["created_at"]),
            "cog_version": COG_VERSION,
            "openapi_schema": self.schema,
        }

    def destination_json(self, row: dict, latest: dict | None, base: str) -> dict:
        model = f"{row['owner']}/{row['name']}"
        return {
            "url": f"{base}/{model}",
            "owner": row["owner"],
            "name": row["name"],
            "description": row["description"],
            "visibility": row["visibility"],
            "hardware": row["hardware"],
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 0,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": None if latest is None else self.trained_version_json(latest),
        }
