"""Replicate's model paths: a model and its versions, as Replicate describes them."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Request as HttpRequest

from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.common import not_found, origin
from sdxl.http.settings import Settings


def model_routes(api: ReplicateApi, settings: Settings) -> APIRouter:
    routes = APIRouter()
    catalogue = api.catalogue

    @routes.get("/v1/models/{owner}/{name}", summary="Get a model")
    def get_model(owner: str, name: str, http: HttpRequest) -> dict:
        model = catalogue.model(owner, name)
        if model is None:
            raise not_found(f"the model {owner}/{name}")
        return catalogue.model_json(model, origin(http, settings))

    @routes.get("/v1/models/{owner}/{name}/versions/{version_id}", summary="Get a version")
    def get_version(owner: str, name: str, version_id: str) -> dict:
        model = catalogue.model(owner, name)
        version = catalogue.version(version_id, model) if model else None
        if version is None:
            raise not_found(f"the version {owner}/{name}:{version_id[:70]}")
        return version.to_json(catalogue.schema)

    return routes
