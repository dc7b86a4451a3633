"""Replicate's HTTP API paths, answered as Replicate answers them (errors included), so that
`replicate.run` and `replicate.trainings` from the official Python and JavaScript clients work
against this server."""

from __future__ import annotations

from fastapi import APIRouter

from sdxl.http.replicate.api import ReplicateApi
from sdxl.http.replicate.file_routes import file_routes
from sdxl.http.replicate.model_routes import model_routes
from sdxl.http.replicate.prediction_routes import prediction_routes
from sdxl.http.replicate.training_routes import training_routes
from sdxl.http.server_settings import Settings
from sdxl.http.service import Service


def router(api: ReplicateApi, service: Service, settings: Settings) -> APIRouter:
    routes = APIRouter()
    routes.include_router(prediction_routes(api, service, settings))
    routes.include_router(training_routes(api, service, settings))
    routes.include_router(model_routes(api, settings))
    routes.include_router(file_routes(api, settings))
    return routes
