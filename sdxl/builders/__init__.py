"""Builders of random-weight SDXL models in the real file layout, for tests and benchmarks
(python -m sdxl weights tiny | random-full): never the product's own weights."""
