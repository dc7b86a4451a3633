"""The real SDXL 1.0 weights: the pinned download from the Hugging Face Hub (the random-weight
builders for tests and benchmarks are in sdxl.builders)."""
