"""The Replicate API's parts, built once at start and wired through their constructors."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from sdxl.engine.shared_queue import SharedQueue
from sdxl.http.replicate.events import Events
from sdxl.http.replicate.housekeeping import Housekeeping
from sdxl.http.replicate.models import Catalogue
from sdxl.http.replicate.predictions import Predictions
from sdxl.http.replicate.render import Renderer
from sdxl.http.replicate.replicas import Replicas
from sdxl.http.replicate.runs import StoredRuns
from sdxl.http.replicate.training_runs import StoredTrainings
from sdxl.http.replicate.trainings import Trainings
from sdxl.http.replicate.webhooks import Webhooks, new_secret
from sdxl.http.settings import Settings
from sdxl.settings import Caps, FetchSettings
from sdxl.store.store import Store


@dataclass(frozen=True)
class ReplicateApi:
    store: Store
    queue: SharedQueue  # the engine's queue: memory jobs and stored predictions
    predictions: Predictions
    catalogue: Catalogue
    renderer: Renderer
    webhooks: Webhooks
    housekeeping: Housekeeping
    runs: StoredRuns  # stored jobs' ends written back to the store
    trainings: Trainings  # trainings and destination models created, cancelled
    training_runs: StoredTrainings  # stored trainings on the engine, their progress stored


def replica_name() -> str:
    host = socket.gethostname()[:40]  # the pod's name on Kubernetes
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def open_store(settings: Settings) -> Store:
    """The store: SQLite in SDXL_STATE_DIR unless SDXL_DATABASE_URL is set, its files in
    SDXL_FILES_DIR (an older database upgraded on the way)."""
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    return Store(settings.store_url, settings.files_folder, settings.store)


def open_replicate_api(
    settings: Settings, store: Store, caps: Caps, fetch: FetchSettings
) -> ReplicateApi:
    """Every part of Replicate's API around `store`, with what a restart left behind settled."""
    replica = replica_name()
    replicas = Replicas(store, replica, settings.replica_timeout_s) if store.shared else None
    renderer = Renderer(store, settings.public_url, settings.store.ttl_s)
    secret = settings.webhook_secret or store.setting("webhook_secret", new_secret)
    webhooks = Webhooks(secret, public_only=fetch.public_only)
    events = Events(store, renderer, webhooks)
    catalogue = Catalogue(settings.models, caps)
    served = frozenset(catalogue.models)
    runs = StoredRuns(store, events, replica, settings.public_url, served)
    work_dir = settings.state_dir / "trainings"
    training_runs = StoredTrainings(store, events, replica, fetch, work_dir)
    queue = SharedQueue(
        store,
        replica,
        runs.job_for,
        settings.store_poll_s,
        training_for=training_runs.job_for,
        kinds=settings.job_kinds,
    )
    housekeeping = Housekeeping(store, queue, replicas, settings.store_poll_s)
    housekeeping.recover()
    return ReplicateApi(
        store=store,
        queue=queue,
        predictions=Predictions(store, queue, events, caps),
        catalogue=catalogue,
        renderer=renderer,
        webhooks=webhooks,
        housekeeping=housekeeping,
        runs=runs,
        trainings=Trainings(store, queue, events),
        training_runs=training_runs,
    )
