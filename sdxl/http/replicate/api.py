"""The Replicate API's parts, built once at start over the job runtime that `open_runtime` builds
for the server (the engine takes its queue from the runtime, the API its calls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdxl.http.replicate.catalogue import Catalogue
from sdxl.http.replicate.predictions import Predictions
from sdxl.http.replicate.render import Renderer
from sdxl.http.replicate.trainings import Trainings
from sdxl.http.server_settings import PREVIEW_EVERY, Settings
from sdxl.runtime.kinds import PREDICTION, TRAINING
from sdxl.runtime.runtime import JobRuntime, RuntimeSettings
from sdxl.settings import Caps, FetchSettings
from sdxl.store.store import Store

if TYPE_CHECKING:
    from sdxl.train.train_settings import TrainSettings


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


def open_runtime(
    settings: Settings,
    store: Store,
    fetch: FetchSettings,
    renderer: Renderer,
    train: TrainSettings | None = None,
) -> JobRuntime:
    """The job runtime around `store`, with what a restart left behind settled; its webhooks
    carry Replicate's objects (`renderer`)."""
    served = frozenset(name.partition(":")[0] for name in settings.served_names)
    runtime_settings = RuntimeSettings(
        work_dir=settings.state_dir / "trainings",
        fetch=fetch,
        public_url=settings.public_url,
        webhook_secret=settings.webhook_secret,
        replica_timeout_s=settings.replica_timeout_s,
        store_poll_s=settings.store_poll_s,
        job_kinds=settings.job_kinds,
        served=served,
        preview_every=PREVIEW_EVERY,
        train=train,
    )
    renderers = {PREDICTION: renderer.prediction, TRAINING: renderer.training}
    return JobRuntime(store, runtime_settings, renderers)


def open_replicate_api(
    settings: Settings, runtime: JobRuntime, renderer: Renderer, caps: Caps
) -> ReplicateApi:
    """Replicate's API over `runtime`."""
    return ReplicateApi(
        store=runtime.store,
        runtime=runtime,
        predictions=Predictions(runtime, caps),
        catalogue=Catalogue(settings.served_names, caps),
        renderer=renderer,
        trainings=Trainings(runtime),
    )
