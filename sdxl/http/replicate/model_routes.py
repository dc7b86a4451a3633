"""Replicate's model paths: a model and its versions, as Replicate describes them. The served
model's, and the caller's destination models (another tenant's answer 404, as a model that
does not exist), whose versions are their trainings' weights."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Request as HttpRequest

from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.common import not_found, origin, whose
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import ReplicateRoute


def model_routes(api: ReplicateApi, settings: Settings) -> APIRouter:
    routes = APIRouter(route_class=ReplicateRoute)
    catalogue, destinations = api.catalogue, api.store.destinations

    def destination(owner: str, name: str, http: HttpRequest) -> dict:
        row = destinations.get(owner, name, whose(http))
        if row is None:
            raise not_found(f"the model {owner}/{name}")
        return row

    @routes.get("/v1/models/{owner}/{name}", summary="Get a model")
    def get_model(owner: str, name: str, http: HttpRequest) -> dict:
        model = catalogue.model(owner, name)
        if model is not None:
            return catalogue.model_json(model, origin(http, settings))
        row = destination(owner, name, http)
        latest = destinations.latest(owner, name)
        return catalogue.destination_json(row, latest, origin(http, settings))

    @routes.get("/v1/models/{owner}/{name}/versions", summary="List a model's versions")
    def list_versions(owner: str, name: str, http: HttpRequest) -> dict:
        model = catalogue.model(owner, name)
        if model is not None:
            found = [catalogue.version(v, model) for v in reversed(catalogue.served[model])]
            results = [version.to_json(catalogue.schema) for version in found]
        else:
            destination(owner, name, http)
            rows = destinations.versions(owner, name)
            results = [catalogue.trained_version_json(row) for row in rows]
        return {"previous": None, "next": None, "results": results}

    @routes.get("/v1/models/{owner}/{name}/versions/{version_id}", summary="Get a version")
    def get_version(owner: str, name: str, version_id: str, http: HttpRequest) -> dict:
        model = catalogue.model(owner, name)
        if model is not None:
            version = catalogue.version(version_id, model)
            if version is not None:
                return version.to_json(catalogue.schema)
        else:
            destination(owner, name, http)
            row = destinations.version(owner, name, version_id)
            if row is not None:
                return catalogue.trained_version_json(row)
        raise not_found(f"the version {owner}/{name}:{version_id[:70]}")

    return routes
