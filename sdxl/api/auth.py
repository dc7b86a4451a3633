"""API keys: loaded from the environment, compared in constant time, never logged or echoed."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sdxl.settings import SettingsError

PROTECTED_PREFIX = "/v1/"
HOW_TO = "send the header 'Authorization: Bearer <your_api_key>'"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def load_api_keys(environ: Mapping[str, str]) -> list[str]:
    """Keys from SDXL_API_KEYS (comma-separated) and the file SDXL_API_KEYS_FILE (one or more
    comma-separated keys a line; blank lines and lines starting with # are skipped)."""
    sources: list[tuple[str, list[str]]] = [
        ("SDXL_API_KEYS", _split(environ.get("SDXL_API_KEYS", "")))
    ]
    path = environ.get("SDXL_API_KEYS_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError(
                f"SDXL_API_KEYS_FILE={path!r} cannot be read ({err}); point it at a readable "
                "UTF-8 text file with one API key a line"
            ) from err
        lines = [line.strip() for line in text.splitlines()]
        from_file = [
            key for line in lines if line and not line.startswith("#") for key in _split(line)
        ]
        sources.append(("SDXL_API_KEYS_FILE", from_file))
    keys: list[str] = []
    for source, found in sources:
        for number, key in enumerate(found, 1):
            if not all(0x21 <= ord(ch) <= 0x7E for ch in key):
                # Say which key, never what it is.
                raise SettingsError(
                    f"API key number {number} in {source} contains a space or a character that "
                    "is not printable ASCII, so no client could send it; replace that key"
                )
            if key not in keys:
                keys.append(key)
    return keys


class ApiKeys:
    """The accepted keys. `matches` compares against every key, so timing reveals nothing."""

    def __init__(self, keys: Iterable[str]):
        self._keys = [key.encode("ascii") for key in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    def matches(self, candidate: bytes) -> bool:
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found


def bearer_token(header: bytes | None) -> tuple[bytes | None, str | None]:
    """(token, None) from an Authorization header value, or (None, why it is unusable)."""
    if header is None:
        return None, f"missing Authorization header; {HOW_TO}"
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None, f"the Authorization header must use the Bearer scheme; {HOW_TO}"
    return token.strip(), None


class AuthMiddleware:
    """Answers 401 for requests under /v1/ without a valid key, before their body is read."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        token, problem = bearer_token(header)
        if token is not None and not self.keys.matches(token):
            problem = f"invalid API key; check the key, then {HOW_TO}"
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = {"title": "Unauthenticated", "detail": problem, "status": 401}  # Replicate's shape
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
