"""The download cache against a loopback HTTP server: hits, LRU, limits, timeouts, schemes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdxl.adapters.fetch import DownloadCache, FetchError
from sdxl.errors import InputError
from sdxl.net import http_get
from sdxl.net.urls import redact
from sdxl.settings import FetchSettings, parse_size

KB = 1024


class Server:
    """Serves `files` (path -> bytes) on 127.0.0.1; counts requests per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.sleep = 0.0
        self.slept: set[str] = set()  # paths whose handler has finished sleeping
        self.no_length: set[str] = set()
        self.lie_length: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.hits[path] = outer.hits.get(path, 0) + 1
                if outer.sleep:
                    time.sleep(outer.sleep)
                    outer.slept.add(path)
                if path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[path])
                    self.end_headers()
                    return
                if path not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[path]
                self.send_response(200)
                if path not in outer.no_length:
                    self.send_header("Content-Length", str(outer.lie_length.get(path, len(body))))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def make_cache(tmp_path, **limits) -> DownloadCache:
    """A cache that may reach the loopback test server (public_only=False)."""
    settings = dict(cache_dir=tmp_path / "cache", connect_timeout=2, read_timeout=2)
    settings.update(public_only=False)
    return DownloadCache(FetchSettings(**{**settings, **limits}))


def test_second_fetch_is_a_cache_hit_with_no_request(tmp_path, server):
    server.files["/w.tar"] = b"x" * 3000
    cache = make_cache(tmp_path)
    first = cache.fetch(server.url("/w.tar?sig=secret"), "replicate_weights")
    second = cache.fetch(server.url("/w.tar?sig=secret"), "replicate_weights")
    assert first == second and first.read_bytes() == b"x" * 3000
    assert server.hits["/w.tar"] == 1
    record = json.loads(first.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(b"x" * 3000).hexdigest()
    assert record["size"] == 3000 and "secret" not in json.dumps(record)


def test_a_changed_cache_file_is_fetched_again(tmp_path, server):
    server.files["/w"] = b"abc" * 100
    cache = make_cache(tmp_path)
    path = cache.fetch(server.url("/w"), "w")
    path.write_bytes(b"tampered")
    assert cache.fetch(server.url("/w"), "w").read_bytes() == b"abc" * 100
    assert server.hits["/w"] == 2


def test_least_recently_used_entries_are_evicted(tmp_path, server):
    for name in "abc":
        server.files[f"/{name}"] = name.encode() * KB
    cache = make_cache(tmp_path, max_total_bytes=int(2.5 * KB))
    a = cache.fetch(server.url("/a"), "x")
    b = cache.fetch(server.url("/b"), "x")
    time.sleep(0.01)
    cache.fetch(server.url("/a"), "x")  # a is now more recent than b
    c = cache.fetch(server.url("/c"), "x")
    assert a.exists() and c.exists() and not b.exists()
    assert cache.total_bytes() <= 2.5 * KB
    assert sorted(p.suffix for p in cache.folder.iterdir()) == [".data", ".data", ".json", ".json"]


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "streamed"])
def test_files_over_the_size_limit_are_aborted(tmp_path, server, announce):
    server.files["/big"] = b"z" * (10 * KB)
    if not announce:
        server.no_length.add("/big")
    cache = make_cache(tmp_path, max_file_bytes=4 * KB)
    with pytest.raises(FetchError, match="limit") as caught:
        cache.fetch(server.url("/big"), "replicate_weights")
    assert isinstance(caught.value, InputError)
    assert str(caught.value).startswith("replicate_weights: could not fetch http://127.0.0.1")
    assert list(cache.folder.iterdir()) == []  # no partial file, no record


def test_a_truncated_body_is_refused(tmp_path, server):
    server.files["/short"] = b"q" * 500
    server.lie_length["/short"] = 2000
    cache = make_cache(tmp_path)
    with pytest.raises(FetchError, match="cut short|truncated"):
        cache.fetch(server.url("/short"), "w")
    assert list(cache.folder.iterdir()) == []


def test_a_server_that_stalls_times_out(tmp_path, server):
    server.files["/slow"] = b"s"
    server.sleep = 5.0
    cache = DownloadCache(
        FetchSettings(
            cache_dir=tmp_path / "c", connect_timeout=1, read_timeout=0.3, public_only=False
        )
    )
    with pytest.raises(FetchError, match="read timeout"):
        cache.fetch(server.url("/slow"), "replicate_weights")
    assert "/slow" not in server.slept  # it gave up while the server was still silent


def test_a_connection_nobody_answers_times_out(tmp_path, monkeypatch):
    import socket

    def never(self, address):
        raise TimeoutError

    monkeypatch.setattr(socket.socket, "connect", never)
    cache = make_cache(tmp_path)
    with pytest.raises(FetchError, match="connect timeout"):
        cache.fetch("http://127.0.0.1:9/x", "replicate_weights")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/w.tar", "data:text/plain,hi", "gopher://x/"],
)
def test_other_schemes_are_refused(tmp_path, url):
    with pytest.raises(FetchError, match="URLs are not supported; give an http"):
        make_cache(tmp_path).fetch(url, "replicate_weights")


def test_redirects_are_followed_but_bounded_and_never_to_other_schemes(tmp_path, server):
    server.files["/real"] = b"ok"
    server.redirects["/hop"] = server.url("/real")
    server.redirects["/loop"] = server.url("/loop")
    server.redirects["/to-file"] = "file:///etc/passwd"
    cache = make_cache(tmp_path, max_redirects=3)
    assert cache.fetch(server.url("/hop"), "x").read_bytes() == b"ok"
    with pytest.raises(FetchError, match="more than 3 redirects"):
        cache.fetch(server.url("/loop"), "x")
    assert server.hits["/loop"] == 4
    with pytest.raises(FetchError, match="redirects to a file URL"):
        cache.fetch(server.url("/to-file"), "x")


def test_http_errors_name_the_input_and_the_url(tmp_path, server):
    shown = r"http://127\.0\.0\.1:\d+/nope\?…"
    with pytest.raises(FetchError, match=f"lora: could not fetch {shown}: HTTP 404") as caught:
        make_cache(tmp_path).fetch(server.url("/nope?token=secret"), "lora")
    assert "secret" not in str(caught.value)


def test_private_addresses_can_be_refused(tmp_path, server):
    server.files["/w"] = b"w"
    cache = make_cache(tmp_path, public_only=True)
    with pytest.raises(FetchError, match="private or local address"):
        cache.fetch(server.url("/w"), "x")
    assert "/w" not in server.hits
    assert http_get.is_public("8.8.8.8") and not http_get.is_public("169.254.169.254")


NOT_PUBLIC = [
    "::127.0.0.1",  # IPv4-compatible (deprecated): loopback
    "::a9fe:a9fe",  # IPv4-compatible: 169.254.169.254, cloud metadata
    "::8.8.8.8",  # IPv4-compatible, whatever it embeds
    "fec0::1",  # site-local (deprecated)
    "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215)
    "::ffff:10.0.0.1",  # IPv4-mapped private
    "::ffff:169.254.169.254",
    "::ffff:0:8.8.8.8",  # IPv4-translated (SIIT), outside 2000::/3
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001::1",
    "2001:db8::1",  # documentation
    "3fff::1",  # documentation (RFC 9637)
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "ff02::1",  # multicast
    "100::1",  # discard-only
    "5f00::1",  # SRv6 SIDs, outside 2000::/3
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # shared (carrier-grade NAT)
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.8",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",  # mapped public IPv4
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8: how an IPv6-only host reaches IPv4
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_private_local_and_embedded_private_addresses_are_not_public(ip):
    assert not http_get.is_public(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_stay_public(ip):
    assert http_get.is_public(ip)


def test_a_malformed_redirect_is_a_fetch_error(tmp_path, server):
    server.redirects["/bracket"] = "http://[::1"  # urlsplit raises ValueError on it
    server.redirects["/space"] = "/a b"
    cache = make_cache(tmp_path)
    with pytest.raises(FetchError, match="redirects to a malformed URL"):
        cache.fetch(server.url("/bracket"), "x")
    with pytest.raises(FetchError, match="the request failed"):
        cache.fetch(server.url("/space"), "x")


def test_local_paths_only_inside_allowed_folders(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "w.tar").write_bytes(b"t")
    (tmp_path / "secret").write_bytes(b"s")
    (allowed / "link").symlink_to(tmp_path / "secret")
    closed = make_cache(tmp_path)
    with pytest.raises(FetchError, match="local paths are not accepted"):
        closed.fetch(str(allowed / "w.tar"), "replicate_weights")
    cache = make_cache(tmp_path, local_dirs=(allowed,))
    assert cache.fetch(str(allowed / "w.tar"), "x") == (allowed / "w.tar").resolve()
    for outside in (tmp_path / "secret", allowed / "link", allowed / ".." / "secret"):
        with pytest.raises(FetchError, match="outside the folders"):
            cache.fetch(str(outside), "x")
    with pytest.raises(FetchError, match="not a regular file"):
        cache.fetch(str(allowed), "x")


def test_helpers():
    assert parse_size("20G") == 20 << 30 and parse_size("512m") == 512 << 20
    assert parse_size("1000") == 1000
    assert (
        redact("https://u:p@host:8443/a/b.tar?X-Amz-Signature=abc#f")
        == "https://host:8443/a/b.tar?…"
    )
