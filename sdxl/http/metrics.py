"""`GET /metrics`: this replica's signals in Prometheus' text format (prometheus_client).

Counters and the histogram move when a job ends (an engine observer); gauges are read from the
engine and the store when Prometheus scrapes. Every figure is this replica's own, except
`sdxl_shared_queue_depth`: read from the prediction store, it is the same on every replica of
one database, so an autoscaler takes it once (max), never summed over replicas. While the
store cannot be read it is absent (not a stale value) and `sdxl_prediction_store_up` is 0.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sdxl.engine import Job, TrainingJob
from sdxl.engine.outcome import FAILURE_KINDS
from sdxl.http.service import Service

log = logging.getLogger(__name__)

# Seconds one generation runs: from a fast GPU's 1024x1024 in about 2 s to long CPU runs.
GENERATION_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800)
# Bytes of GPU memory one job allocated at its peak: SDXL at 1024x1024 in float16 takes 9-12 GB.
PEAK_BUCKETS = tuple(gb * 2**30 for gb in (4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64, 80))
NO_TENANT = "none"  # predictions from before tenants, and jobs of the Cog predictor
STORE_UP = "sdxl_prediction_store_up"
STORE_UP_HELP = (
    "1 when the prediction store's database answered this scrape; 0 when it did not (then "
    "sdxl_shared_queue_depth is left out rather than stale)"
)


class Metrics:
    """The registry behind /metrics for one app (its own, so that apps never share counts)."""

    def __init__(self, service: Service, store=None):
        self.registry = CollectorRegistry()
        self.generation_seconds = Histogram(
            "sdxl_generation_seconds",
            "Seconds a successful generation held the GPU, by mode and refine",
            ["mode", "refine"],
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "sdxl_images_generated",
            "Images generated (before the safety checker's filter)",
            ["mode"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "sdxl_jobs_finished",
            "Jobs that ended, by status (succeeded, failed, canceled)",
            ["status"],
            registry=self.registry,
        )
        self.failures = Counter(
            "sdxl_job_failures",
            "Jobs that did not succeed, by kind: " + ", ".join(FAILURE_KINDS),
            ["kind"],
            registry=self.registry,
        )
        self.tenant_jobs = Counter(
            "sdxl_tenant_jobs_finished",
            "Jobs that ended, by tenant (the API key's name, or a digest of it; never the key) "
            "and status",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.peak_memory = Histogram(
            "sdxl_job_peak_memory_bytes",
            "The most GPU memory one successful job allocated (CUDA only)",
            buckets=PEAK_BUCKETS,
            registry=self.registry,
        )
        self.training_steps = Counter(
            "sdxl_training_steps",
            "Training steps run on this replica (counted when each training's run ends)",
            registry=self.registry,
        )
        for kind in FAILURE_KINDS:  # present at 0, so that rate() sees the first failure
            self.failures.labels(kind)
        self.registry.register(EngineCollector(service, store))
        service.engine.observers.append(self.observe)

    def observe(self, job: Job) -> None:
        """Count an ended job (an engine observer: runs on the engine's threads)."""
        self.jobs.labels(job.status).inc()
        self.tenant_jobs.labels(job.tenant or NO_TENANT, job.status).inc()
        training = isinstance(job, TrainingJob)
        if training:
            self.training_steps.inc(job.steps.get("train", 0))
        if not job.outcome.succeeded:
            self.failures.labels(job.outcome.kind).inc()
            return
        if training:
            return
        if job.peak_device_bytes is not None:
            self.peak_memory.observe(job.peak_device_bytes)
        result = job.result()
        self.images.labels(result.mode).inc(len(result.images))
        if job.run_seconds is not None:
            refine = job.request.refine
            self.generation_seconds.labels(result.mode, refine).observe(job.run_seconds)


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
