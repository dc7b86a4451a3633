"""The Replicate API's parts, built once at start around the job runtime."""

from __future__ import annotations

from dataclasses import dataclass

from sdxl.http.replicate.catalogue import Catalogue
from sdxl.http.replicate.predictions import Predictions
from sdxl.http.replicate.render import Renderer
from sdxl.http.replicate.trainings import Trainings
from sdxl.http.settings import PREVIEW_EVERY, Settings
from sdxl.runtime.runtime import PREDICTION, TRAINING, JobRuntime, RuntimeSettings
from sdxl.settings import Caps, FetchSettings
from sdxl.store.store import Store


@dataclass(frozen=True)
class ReplicateApi:
    store: Store
    runtime: JobRuntime  # stored jobs: created, queued for the engine, run, ended, delivered
    predictions: Predictions  # a prediction's body checked, then created or cancelled
    catalogue: Catalogue
    renderer: Renderer
    trainings: Trainings  # trainings and destination models checked, created, cancelled


def open_store(settings: Settings) -> Store:
    """The store: SQLite in SDXL_STATE_DIR unless SDXL_DATABASE_URL is set, its files in
    SDXL_FILES_DIR (an older database upgraded on the way)."""
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    return Store(settings.store_url, settings.files_folder, settings.store)


def open_replicate_api(
    settings: Settings, store: Store, caps: Caps, fetch: FetchSettings
) -> ReplicateApi:
    """Replicate's API over a job runtime around `store`."""
    renderer = Renderer(store, settings.public_url, settings.store.ttl_s)
    catalogue = Catalogue(settings.models, caps)
    runtime_settings = RuntimeSettings(
        work_dir=settings.state_dir / "trainings",
        fetch=fetch,
        public_url=settings.public_url,
        webhook_secret=settings.webhook_secret,
        replica_timeout_s=settings.replica_timeout_s,
        store_poll_s=settings.store_poll_s,
        job_kinds=settings.job_kinds,
        served=frozenset(catalogue.models),
        preview_every=PREVIEW_EVERY,
    )
    renderers = {PREDICTION: renderer.prediction, TRAINING: renderer.training}
    runtime = JobRuntime(store, runtime_settings, renderers)
    return ReplicateApi(
        store=store,
        runtime=runtime,
        predictions=Predictions(runtime, caps),
        catalogue=catalogue,
        renderer=renderer,
        trainings=Trainings(store, runtime),
    )
