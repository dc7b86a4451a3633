"""API keys: loaded from the environment, compared in constant time, never logged or echoed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from sdxl.api.errors import Unauthenticated
from sdxl.api.shapes import error_response
from sdxl.settings import SettingsError

PROTECTED_PREFIXES = ("/v1/", "/sdapi/")
HOW_TO = "send the header 'Authorization: Bearer <your_api_key>'"
ANONYMOUS = "anonymous"  # the caller when the server runs without keys (--no-auth)


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


def presented_key(header: bytes | None) -> tuple[bytes | None, str | None]:
    """(key, None) from an Authorization header value, or (None, why it is unusable).

    `Bearer <key>`, or HTTP Basic with the key as the password and any user name
    (AUTOMATIC1111's --api-auth user:password). An empty header, or a scheme with nothing after
    it (Open WebUI sends `Basic ` when no credentials are configured), is no key."""
    if header is None or not header.strip():
        return None, f"missing Authorization header; {HOW_TO}"
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if not token:
        return None, f"missing API key; {HOW_TO}"
    if scheme.lower() == b"bearer":
        return token, None
    if scheme.lower() == b"basic":
        try:
            _user, colon, password = base64.b64decode(token, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            colon, password = b"", b""
        if colon and password:
            return password, None
        return (
            None,
            f"the Basic credentials are not user:password with a key as the password; {HOW_TO}",
        )
    return None, f"the Authorization header must use the Bearer or Basic scheme; {HOW_TO}"


def caller_of(http) -> str:
    """Who made the request: the key's tenant (a digest of the key; "anonymous" without keys)."""
    return getattr(http.state, "caller", ANONYMOUS)


def key_digest(key: bytes) -> str:
    return "key-" + hashlib.sha256(b"sdxl-caller:" + key).hexdigest()[:12]


class AuthMiddleware:
    """Answers 401 for requests under /v1/ and /sdapi/ without a valid key, before their body
    is read, in the shape of the path's API; names the caller of the others."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        key, problem = presented_key(header)
        if key is not None and not self.keys.matches(key):
            problem = f"invalid API key; check the key, then {HOW_TO}"
        if problem is None:
            scope.setdefault("state", {})["caller"] = key_digest(key)
            await self.app(scope, receive, send)
            return
        scheme = 'Basic realm="sdxl"' if path.startswith("/sdapi/") else "Bearer"
        error = Unauthenticated(problem, headers={"WWW-Authenticate": scheme})
        await error_response(path, error)(scope, receive, send)
