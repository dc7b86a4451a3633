"""What ended jobs count to, as Prometheus counters and histograms: by status, tenant, failure
kind, mode and refine, their images, seconds, peak memory and training steps. An engine
observer fills them on the engine's threads; the API that serves /metrics adds its gauges to
the same registry and reads it at each scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from sdxl.engine import Job, TrainingJob
from sdxl.engine.outcome import FAILURE_KINDS

# Seconds one generation runs: from a fast GPU's 1024x1024 in about 2 s to long CPU runs.
GENERATION_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800)
# Bytes of GPU memory one job allocated at its peak: SDXL at 1024x1024 in float16 takes 9-12 GB.
PEAK_BUCKETS = tuple(gb * 2**30 for gb in (4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64, 80))
NO_TENANT = "none"  # predictions from before tenants, and jobs of the Cog predictor


class JobMetrics:
    """Counters and histograms of ended jobs, in `registry` (an API serves it)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
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

    def observe(self, job: Job) -> None:
        """Count an ended job (an engine observer: it runs on the engine's threads)."""
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
