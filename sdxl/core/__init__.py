"""The engine core: requests and their checks, step plans, prompts, the loaded pipelines,
denoising and post-processing. Knows nothing of Cog, HTTP or trained weights."""
