"""A request through diffusers' SDXL pipelines, in phases: plan, denoise, finish."""
