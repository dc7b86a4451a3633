"""URLs as they may appear in logs and messages: without query, fragment or credentials."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """The URL without query, fragment or credentials: safe to log and to show users."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{_port_or_none(parts)}" if _port_or_none(parts) else ""
    tail = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{tail}"[:300]


def _port_or_none(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None
