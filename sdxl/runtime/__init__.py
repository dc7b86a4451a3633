"""The job runtime, beneath the APIs and above the engine: stored jobs from creation to end
(`sdxl.runtime.runtime`), and the synchronous APIs' jobs waiting in memory."""
