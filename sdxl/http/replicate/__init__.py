"""Replicate's prediction API, so that the official clients' `replicate.run` works unchanged
against this server (`/v1/predictions`, `/v1/models/...`, `/v1/files`, webhooks)."""
