"""OpenAI's Images API on this server (/v1/images/generations, /v1/images/edits, /v1/models)."""
