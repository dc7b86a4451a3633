"""The Cog surface: predict.py's helpers, the static schema, `serve` and `predict` commands."""
