"""AUTOMATIC1111's progress: each caller's requests in flight, in the order they came, and what
`/sdapi/v1/progress` reports of the first one still running (its batch, step and preview).

A caller with two requests at once has two runs: the second one's progress never overwrites
the first's; interrupt stops them all, skip the running batch of the first.

Previews are made only for a run whose caller reads them: the first `/progress` that asks for
the current image turns them on for that run's jobs (every PREVIEW_EVERY steps from then on),
so a request nobody watches does no per-step work beyond counting.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from sdxl.engine import Job
from sdxl.http.a1111.info import job_timestamp


@dataclass
class Run:
    """One caller's txt2img or img2img request in flight: what /progress reports."""

    jobs: list[Job]
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=job_timestamp)
    interrupted: bool = False
    skipped: bool = False

    def watch(self, every: int) -> None:
        """Someone reads the previews: the jobs not ended make one every `every` steps."""
        for job in self.jobs:
            if not job.preview_every:
                job.want_previews(every)


class Runs:
    """The runs in flight, by caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_caller: dict[str, list[Run]] = {}

    def add(self, caller: str, run: Run) -> None:
        with self._lock:
            self._by_caller.setdefault(caller, []).append(run)

    def remove(self, caller: str, run: Run) -> None:
        with self._lock:
            runs = self._by_caller.get(caller, [])
            if run in runs:
                runs.remove(run)
            if not runs:
                self._by_caller.pop(caller, None)

    def of(self, caller: str) -> list[Run]:
        with self._lock:
            return list(self._by_caller.get(caller, []))

    def current(self, caller: str) -> Run | None:
        """The caller's oldest run with a job still to end."""
        return next((r for r in self.of(caller) if not all(j.done() for j in r.jobs)), None)


def progress_of(run: Run | None, skip_current_image: bool, preview_every: int) -> dict:
    """What /progress answers; asking for the current image turns the run's previews on."""
    idle = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if run is None or all(job.done() for job in run.jobs):
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": idle,
            "current_image": None,
            "textinfo": None,
        }
    if not skip_current_image:
        run.watch(preview_every)
    count = len(run.jobs)
    number = next(i for i, job in enumerate(run.jobs) if not job.done())
    job = run.jobs[number]
    step = sum(job.steps.values())  # base, refiner and the hires fix's second pass
    plan = job.generation.plan if job.generation is not None else None
    steps = plan.total_steps if plan else job.request.num_inference_steps
    progress = 0.01 + number / count + (step / max(steps, 1)) / count
    elapsed = time.monotonic() - run.started
    image = None
    if job.preview is not None and not skip_current_image:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(job.preview.jpeg)).save(buffer, "PNG")
        image = base64.b64encode(buffer.getvalue()).decode("ascii")
    state = {
        **idle,
        "skipped": run.skipped,
        "interrupted": run.interrupted,
        "job": f"Batch {number + 1} out of {count}",
        "job_count": count,
        "job_timestamp": run.timestamp,
        "job_no": number,
        "sampling_step": step,
        "sampling_steps": steps,
    }
    return {
        "progress": min(progress, 1.0),
        "eta_relative": max(0.0, elapsed / progress - elapsed),
        "state": state,
        "current_image": image,
        "textinfo": None,
    }
