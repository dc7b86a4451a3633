"""`GET /metrics`: this replica's signals in Prometheus' text format (prometheus_client).

Counters and histograms move when a job ends (`sdxl.runtime.job_metrics`); gauges are read from the
engine and the store when Prometheus scrapes. Every figure is this replica's own, except
`sdxl_shared_queue_depth`: read from the prediction store, it is the same on every replica of
one database, so an autoscaler takes it once (max), never summed over replicas. While the
store cannot be read it is absent (not a stale value) and `sdxl_prediction_store_up` is 0.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sdxl.http.service import Service
from sdxl.runtime.job_metrics import NO_TENANT, JobMetrics

log = logging.getLogger(__name__)

STORE_UP = "sdxl_prediction_store_up"
STORE_UP_HELP = (
    "1 when the prediction store's database answered this scrape; 0 when it did not (then "
    "sdxl_shared_queue_depth is left out rather than stale)"
)


class Metrics:
    """The registry behind /metrics for one app (its own, so that apps never share counts):
    the runtime's counts of ended jobs and the gauges read at each scrape."""

    def __init__(self, service: Service, store=None):
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics(self.registry)
        self.registry.register(EngineCollector(service, store))
        service.engine.observers.append(self.jobs.observe)


class EngineCollector(Collector):
    """The gauges, read at each scrape."""

    def __init__(self, service: Service, store=None):
        self.service = service
        self.store = store  # the Replicate API's prediction store, when it is on

    def collect(self):
        engine = self.service.engine
        counts = engine.counts()
        yield _gauge(
            "sdxl_queue_depth",
            "Jobs waiting for this replica's GPU: queued, being prepared, or prepared",
            counts["queued"] + counts["preparing"] + counts["ready"],
        )
        yield _gauge("sdxl_running_jobs", "Jobs running on this replica's GPU", counts["running"])
        ready = GaugeMetricFamily(
            "sdxl_server_status", "1 for this replica's status", labels=["status"]
        )
        status = self.service.status
        for name in ("loading", "ready", "draining", "failed"):
            ready.add_metric([name], 1.0 if status == name else 0.0)
        yield ready
        if engine.load_seconds is not None:
            yield _gauge(
                "sdxl_model_load_seconds", "Seconds the model took to load", engine.load_seconds
            )
        if engine.runner is not None:
            stats = engine.runner.resident.stats()
            resident = GaugeMetricFamily(
                "sdxl_resident_adapters",
                "Trained weights kept loaded on the GPU, by kind (lora, unet)",
                labels=["kind"],
            )
            resident.add_metric(["lora"], stats["loras"])
            resident.add_metric(["unet"], stats["unets"])
            yield resident
        training = engine.training()
        rate = None if training is None else training.work.steps_per_second()
        if rate is not None:
            yield _gauge(
                "sdxl_training_steps_per_second",
                "Training steps per second of the training running on this replica",
                rate,
            )
        peak = engine.peak_device_bytes()
        if peak is not None:
            yield _gauge("sdxl_gpu_peak_memory_bytes", "Peak GPU memory allocated", peak)
        if self.store is not None:
            try:
                waiting = self.store.predictions.count_queued()
                by_tenant = self.store.predictions.queued_by_tenant()
                trainings = self.store.trainings.counts()
            except Exception as err:  # the database is away: the other metrics still go out
                log.warning("reading the shared queue's depth failed: %s", err)
                yield _gauge(STORE_UP, STORE_UP_HELP, 0)  # and the depth is absent, not stale
            else:
                yield _gauge(STORE_UP, STORE_UP_HELP, 1)
                yield _gauge(
                    "sdxl_shared_queue_depth",
                    "Predictions waiting in the prediction store that no replica has claimed "
                    "(the same on every replica of one database: take it once, never sum)",
                    waiting,
                )
                tenants = GaugeMetricFamily(
                    "sdxl_shared_queue_depth_by_tenant",
                    "Of sdxl_shared_queue_depth, each tenant's (the same on every replica)",
                    labels=["tenant"],
                )
                for tenant, count in sorted(by_tenant.items()):
                    tenants.add_metric([tenant or NO_TENANT], count)
                yield tenants
                yield _trainings(trainings)


TRAINING_STATES = {  # the store's status -> the metric's label
    "starting": "queued",
    "processing": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}


def _trainings(counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "sdxl_trainings",
        "Trainings in the store by state: queued, running, and finished by status (the same "
        "on every replica of one database: take it once, never sum)",
        labels=["state"],
    )
    for status, label in TRAINING_STATES.items():
        family.add_metric([label], counts.get(status, 0))
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
