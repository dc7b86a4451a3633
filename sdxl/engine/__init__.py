"""The engine: the one owner of the loaded models. Every API submits its jobs here.

It knows nothing of Cog or HTTP; see `sdxl.engine.engine` for how a job moves through it.
"""

from sdxl.engine.engine import Engine, EngineState
from sdxl.engine.engine_settings import EngineSettings
from sdxl.engine.generation_job import GenerationJob
from sdxl.engine.jobs import (
    DeadlineExceeded,
    EngineBroken,
    Job,
    JobCanceled,
    JobEvents,
    JobStatus,
    OutOfMemory,
    ServerStopping,
)
from sdxl.engine.queue import JobQueue, MemoryQueue
from sdxl.engine.training_job import TrainingJob

__all__ = [
    "DeadlineExceeded",
    "Engine",
    "EngineBroken",
    "EngineSettings",
    "EngineState",
    "GenerationJob",
    "Job",
    "JobCanceled",
    "JobEvents",
    "JobQueue",
    "JobStatus",
    "MemoryQueue",
    "OutOfMemory",
    "ServerStopping",
    "TrainingJob",
]
