"""One hardened HTTP(S) request: stdlib only, every limit explicit.

http/https only; redirects counted and checked (never to another scheme, never from https
down to plain http); the host resolved once, optionally refused when it is not public, and
connected to exactly the vetted addresses; separate connect and read timeouts plus a deadline
for the whole transfer; no content encoding; the body streamed with a byte limit.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from sdxl.settings import FetchSettings

_CHUNK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)

Fail = Callable[[str], Exception]  # builds the error to raise from a reason


@dataclass(frozen=True)
class Limits:
    connect_timeout: float
    read_timeout: float
    deadline: float  # monotonic clock time by which the transfer must be over
    max_redirects: int
    public_only: bool
    user_agent: str = "sdxl-cog"
    check: Callable[[], None] | None = None  # called between chunks; raises to stop (cancel)

    @classmethod
    def of(cls, settings: FetchSettings, check=None, deadline: float | None = None) -> Limits:
        """The limits of `settings` (SDXL_FETCH_*); `deadline` (monotonic) when it is sooner."""
        own = time.monotonic() + settings.deadline
        return cls(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            deadline=own if deadline is None else min(own, deadline),
            max_redirects=settings.max_redirects,
            public_only=settings.public_only,
            check=check,
        )


def open_url(url: str, lim: Limits, fail: Fail):
    """Follow redirects to a 200 response: (connection, response, final URL).

    The caller closes the connection."""
    for _hop in range(lim.max_redirects + 1):
        conn = _connect(url, lim, fail)  # the URL is well formed past this
        target = _target(urlsplit(url))
        try:
            headers = {"User-Agent": lim.user_agent, "Accept-Encoding": "identity"}
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise fail(f"no response within {lim.read_timeout:g} s (read timeout)") from None
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise fail(f"the request failed ({type(err).__name__})") from None
        if time.monotonic() > lim.deadline:
            conn.close()
            raise fail("the transfer deadline passed")
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            conn.close()
            if not location:
                raise fail(f"HTTP {response.status} without a Location")
            try:
                new = urljoin(url, location.strip())
            except ValueError:
                raise fail("it redirects to a malformed URL, refused") from None
            new_scheme = _split(new, fail).scheme.lower()
            if new_scheme not in ("http", "https"):
                raise fail(f"it redirects to a {new_scheme or 'schemeless'} URL, refused")
            if _split(url, fail).scheme.lower() == "https" and new_scheme == "http":
                raise fail("it redirects from https to plain http, refused")
            url = new
            continue
        if response.status != 200:
            conn.close()
            raise fail(f"HTTP {response.status} {response.reason}".strip())
        if (response.getheader("Content-Encoding") or "identity").lower() != "identity":
            conn.close()
            raise fail("the server sent an encoded (compressed) body, refused")
        return conn, response, url
    raise fail(f"more than {lim.max_redirects} redirects")


def content_length(response) -> int | None:
    value = response.getheader("Content-Length")
    try:
        n = int(value) if value is not None else -1
    except ValueError:
        return None
    return n if n >= 0 else None


def stream(response, out: BinaryIO, limit: int, lim: Limits, fail: Fail) -> tuple[int, str]:
    """Copy the body to `out` within `limit` bytes and the deadline: (bytes, sha256 hex)."""
    digest = hashlib.sha256()
    got = 0
    while True:
        if time.monotonic() > lim.deadline:
            raise fail("the transfer deadline passed")
        if lim.check is not None:
            lim.check()
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError:
            raise fail(f"no data for {lim.read_timeout:g} s (read timeout)") from None
        except http.client.IncompleteRead as err:
            raise fail(f"the body was cut short after {got + len(err.partial)} bytes") from None
        except (OSError, http.client.HTTPException) as err:
            raise fail(f"the connection failed ({type(err).__name__})") from None
        if not chunk:
            return got, digest.hexdigest()
        got += len(chunk)
        if got > limit:
            raise fail(f"it is larger than the limit of {limit} bytes")
        digest.update(chunk)
        out.write(chunk)


def _split(url: str, fail: Fail):
    try:
        return urlsplit(url)
    except ValueError:  # an unclosed [IPv6 bracket, for one
        raise fail("the URL is malformed") from None


def _target(parts) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _connect(url: str, lim: Limits, fail: Fail) -> http.client.HTTPConnection:
    parts = _split(url, fail)
    if parts.username is not None or parts.password is not None:
        raise fail("credentials in URLs are not supported")
    host = parts.hostname
    if not host:
        raise fail("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise fail("the URL has an invalid port") from None
    https = parts.scheme.lower() == "https"
    port = port or (443 if https else 80)
    addresses = _resolve(host, port, lim.public_only, fail)
    if https:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=lim.connect_timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=lim.connect_timeout)

    def connect_vetted(_address, timeout, source_address=None):
        # The addresses vetted above, never a second DNS answer (no rebinding in between).
        last: OSError | None = None
        for family, addr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(addr)
                return sock
            except OSError as err:
                sock.close()
                last = err
        raise last or OSError("no address")

    conn._create_connection = connect_vetted  # type: ignore[attr-defined]
    try:
        conn.connect()  # TCP, and the TLS handshake for https, under the connect timeout
    except TimeoutError:
        conn.close()
        raise fail(f"no connection within {lim.connect_timeout:g} s (connect timeout)") from None
    except ssl.SSLError as err:
        conn.close()
        raise fail(f"TLS failed ({err.reason or 'handshake'})") from None
    except OSError as err:
        conn.close()
        raise fail(f"cannot connect ({err.strerror or type(err).__name__})") from None
    conn.sock.settimeout(lim.read_timeout)
    return conn


def _resolve(host: str, port: int, public_only: bool, fail: Fail) -> list[tuple[int, tuple]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise fail("cannot resolve the host") from None
    out = []
    for family, _type, _proto, _name, addr in infos:
        if public_only and not is_public(addr[0]):
            raise fail("the host resolves to a private or local address, refused")
        out.append((family, addr))
    if not out:
        raise fail("the host has no address")
    return out


# IPv6 beyond these is judged by ipaddress's flags; 2000::/3 is the only global unicast space,
# so the IPv4-compatible ::/96, site-local fec0::/10, local-use NAT64 64:ff9b:1::/48 and
# whatever else is unallocated are refused.
_GLOBAL_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are IPv4
_TEREDO = ipaddress.ip_network("2001::/32")  # a tunnel to an obfuscated IPv4 address, refused
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network": 0.x.x.x reaches the host itself on Linux
        "100.64.0.0/10",  # carrier-grade NAT (shared)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637, newer than ipaddress's tables)
    )
)


def is_public(ip: str) -> bool:
    """A globally routable unicast address: not loopback, private, link-local (cloud metadata
    at 169.254.169.254), shared, reserved, site-local, unspecified or multicast. IPv6 forms that
    embed an IPv4 address (mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged
    by that address; Teredo and IPv6 outside 2000::/3 are never public."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(str(embedded))
        if addr not in _GLOBAL_V6 or addr in _TEREDO or addr.is_site_local:
            return False
    flagged = (
        addr.is_private
        or addr.is_reserved
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_loopback
        or addr.is_unspecified
    )
    listed = any(addr in net for net in _NOT_PUBLIC if net.version == addr.version)
    return addr.is_global and not flagged and not listed


def get_bytes(url: str, lim: Limits, limit: int, fail: Fail) -> tuple[bytes, str | None]:
    """The whole body of a GET (at most `limit` bytes) and its Content-Type."""
    conn, response, _final = open_url(url, lim, fail)
    try:
        expected = content_length(response)
        if expected is not None and expected > limit:
            raise fail(f"it is {expected} bytes; the limit is {limit}")
        out = io.BytesIO()
        got, _sha = stream(response, out, limit, lim, fail)
        if expected is not None and got != expected:
            raise fail(f"got {got} bytes of the {expected} announced (truncated)")
        return out.getvalue(), response.getheader("Content-Type")
    finally:
        conn.close()


def post(url: str, body: bytes, headers: dict[str, str], lim: Limits, fail: Fail) -> int:
    """POST `body` to `url` (no redirects followed); the response status."""
    parts = _split(url, fail)
    if parts.scheme.lower() not in ("http", "https"):
        raise fail(f"{parts.scheme or 'schemeless'} URLs are not supported; give an http(s) URL")
    conn = _connect(url, lim, fail)
    try:
        conn.request("POST", _target(parts), body, {"User-Agent": lim.user_agent, **headers})
        response = conn.getresponse()
        response.read(64 << 10)
        return response.status
    except TimeoutError:
        raise fail(f"no response within {lim.read_timeout:g} s (read timeout)") from None
    except (OSError, http.client.HTTPException) as err:
        raise fail(f"the request failed ({type(err).__name__})") from None
    finally:
        conn.close()
