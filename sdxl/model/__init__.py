"""The loaded models: weights read once, pipelines over the shared modules, the fast path."""
