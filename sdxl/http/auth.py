"""API keys and their tenants: loaded from the environment, compared in constant time, never
logged or echoed. Each key belongs to a tenant (its name in `name:key`, or a keyed digest), which
owns the predictions and files made with it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from sdxl.config import ANONYMOUS
from sdxl.http.errors import Unauthenticated
from sdxl.http.shapes import A1111_PREFIXES, error_response
from sdxl.settings import SettingsError

PROTECTED_PREFIXES = ("/v1/", *A1111_PREFIXES)
HOW_TO = "send the header 'Authorization: Bearer <your_api_key>'"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a tenant's name, as in `name:key`
RESERVED = ("key-", "anonymous")  # the names of unnamed keys and of --no-auth
ADMIN_NAME = "admin"  # SDXL_ADMIN_KEY's tenant unless it is given as name:key


@dataclass(frozen=True)
class KeyEntry:
    """One accepted key: `name:key` names its tenant; a key alone is named by a digest."""

    key: str
    name: str | None = None
    admin: bool = False  # SDXL_ADMIN_KEY: sees and cancels every tenant's predictions


def load_api_keys(environ: Mapping[str, str]) -> list[KeyEntry]:
    """Keys from SDXL_API_KEYS (comma-separated), the file SDXL_API_KEYS_FILE (one or more
    comma-separated keys a line; blank lines and lines starting with # are skipped) and
    SDXL_ADMIN_KEY. Each is `key` or `name:key`; several keys may share a name (one tenant:
    how a key is rotated)."""
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
    admin = environ.get("SDXL_ADMIN_KEY", "").strip()
    sources.append(("SDXL_ADMIN_KEY", [admin] if admin else []))
    entries: list[KeyEntry] = []
    for source, found in sources:
        for number, text in enumerate(found, 1):
            entry = _entry(text, source, number)
            if all(e.key != entry.key for e in entries):
                entries.append(entry)
            elif source == "SDXL_ADMIN_KEY":
                raise SettingsError("SDXL_ADMIN_KEY is also an ordinary API key; use another key")
    return entries


def _entry(text: str, source: str, number: int) -> KeyEntry:
    admin = source == "SDXL_ADMIN_KEY"
    name, colon, key = text.partition(":")
    if not colon:
        name, key = (ADMIN_NAME if admin else None), text
    where = f"API key number {number} in {source}"
    if not key or not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        # Say which key, never what it is.
        raise SettingsError(
            f"{where} contains a space or a character that is not printable ASCII, or is "
            "empty, so no client could send it; replace that key"
        )
    if name is not None and (not NAME.fullmatch(name) or name.startswith(RESERVED)):
        raise SettingsError(
            f"{where} is given as name:key with the name {name[:64]!r}, which is not a tenant "
            "name: use letters, digits, '_', '.' and '-' (at most 64, not starting with 'key-' "
            "or 'anonymous'), or give the key alone"
        )
    return KeyEntry(key, name, admin)


@dataclass(frozen=True)
class Caller:
    """Who made a request: its tenant's name (never the key) and whether it sees every
    tenant's predictions (the admin key; everyone without keys)."""

    tenant: str
    admin: bool = False


ANONYMOUS_CALLER = Caller(ANONYMOUS, admin=True)  # --no-auth: one user, who sees everything


class ApiKeys:
    """The accepted keys and their tenants. `identify` compares against every key, so timing
    reveals nothing. A key given without a name is named by a keyed digest (`salt`, kept in
    the store so that every replica and restart names it alike)."""

    def __init__(self, entries: Iterable[KeyEntry], salt: bytes):
        self._keys = [
            (e.key.encode("ascii"), Caller(e.name or _digest_name(e.key, salt), e.admin))
            for e in entries
        ]

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    @property
    def tenants(self) -> list[str]:
        return sorted({caller.tenant for _, caller in self._keys})

    def identify(self, candidate: bytes) -> Caller | None:
        found = None
        for key, caller in self._keys:
            if hmac.compare_digest(candidate, key):
                found = caller
        return found


def new_salt() -> str:
    return secrets.token_hex(16)


def _digest_name(key: str, salt: bytes) -> str:
    return "key-" + hmac.new(salt, key.encode("ascii"), hashlib.sha256).hexdigest()[:12]


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


def caller(http) -> Caller:
    """Who made the request (everyone is the one admin caller without keys)."""
    return getattr(http.state, "caller", ANONYMOUS_CALLER)


def caller_of(http) -> str:
    """The request's tenant: the key's name, or a keyed digest of it ("anonymous" without keys);
    progress, interrupt and every stored prediction and file belong to it."""
    return caller(http).tenant


class AuthMiddleware:
    """Answers 401 for requests under /v1/, /sdapi/ and /controlnet/ without a valid key,
    before their body is read, in the shape of the path's API; names the caller of the
    others."""

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
        found = None if key is None else self.keys.identify(key)
        if key is not None and found is None:
            problem = f"invalid API key; check the key, then {HOW_TO}"
        if problem is None:
            scope.setdefault("state", {})["caller"] = found
            await self.app(scope, receive, send)
            return
        scheme = 'Basic realm="sdxl"' if path.startswith(A1111_PREFIXES) else "Bearer"
        error = Unauthenticated(problem, headers={"WWW-Authenticate": scheme})
        await error_response(path, error, scope.get("method", "GET"))(scope, receive, send)
