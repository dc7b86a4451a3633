"""`python -m sdxl api`: settings and keys checked, port bound, model loaded in the background.

SIGTERM (or Ctrl+C) stops it: new requests get 503 with Retry-After, the generation running
finishes and its response goes out; the synchronous requests still waiting get 503 "the server
is stopping; retry", and stored predictions stay queued for another replica or the next start
(those this process claimed go back to the queue). Then the process exits 0: the grace period
it needs is SDXL_MAX_SECONDS plus half a minute. A second signal stops at once after the
requests in flight; a third Ctrl+C forces it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from sdxl import logs
from sdxl.engine import Engine, EngineSettings, EngineState
from sdxl.http.app import create_app
from sdxl.http.auth import ApiKeys, KeyEntry, load_api_keys, new_salt
from sdxl.http.replicate.api import open_replicate_api, open_runtime, open_store
from sdxl.http.replicate.render import Renderer
from sdxl.http.server_settings import Settings, tenant_count
from sdxl.http.service import ServerStatus, Service
from sdxl.settings import SettingsError
from sdxl.settings.tree import load_settings
from sdxl.train.train_settings import TrainSettings

log = logging.getLogger("sdxl.http")

USAGE_ERROR = 2
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
QUIET_PATHS = ("/health", "/ready", "/metrics")  # polled every few seconds


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before the shutdown and exit status 0 after a signal."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service.status in (ServerStatus.FAILED, ServerStatus.DRAINING):
            super().handle_exit(sig, frame)  # a second signal: stop after what is in flight
        else:
            self.service.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.service.drained or self.service.engine.state == EngineState.LOAD_FAILED

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal after shutting down, which would end
        # the process with -SIGTERM instead of 0 after a clean drain.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class QuietProbes(logging.Filter):
    """Keeps successful probes and scrapes (every few seconds) out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) == 5 and args[2] in QUIET_PATHS and args[4] == 200)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdxl api",
        description="Serve SDXL over Replicate's prediction API and the DataCrunch endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (8000)")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys (only for a trusted network; binds to loopback by default)",
    )
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keys(no_auth: bool, host: str, sources: dict[str, str]) -> list[KeyEntry] | None:
    """The keys to require, or None for --no-auth. Raises SettingsError without any key."""
    keys = load_api_keys(sources)
    if no_auth:
        if keys:
            log.warning("--no-auth given: ignoring the %d configured API keys", len(keys))
        if not _is_loopback(host):
            log.warning("--no-auth on %s: anyone who can reach this address can generate", host)
        return None
    if not keys:
        raise SettingsError(
            "no API keys configured: set SDXL_API_KEYS (comma-separated) or SDXL_API_KEYS_FILE "
            "(a file with one key a line), or pass --no-auth to serve without authentication"
        )
    return keys


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tree = load_settings()  # every SDXL_* variable, read once and checked
    except SettingsError as err:
        print(f"sdxl api: refusing to start: {err}", file=sys.stderr)
        return USAGE_ERROR
    logs.configure_server(tree.http.log_format)
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    os.environ.setdefault("TQDM_DISABLE", "1")  # fewer diffusers progress bars in the log
    try:
        keys = _keys(args.no_auth, args.host, tree.http.key_sources())
        tenants = tenant_count(keys or ())  # the keys' shares
        settings = Settings.from_groups(tree.http, tree.store, tenants)
        model_settings = tree.runtime.build()  # the weights, device and dtype
        engine_settings = EngineSettings.from_tree(tree)
    except SettingsError as err:
        print(f"sdxl api: refusing to start: {err}", file=sys.stderr)
        return USAGE_ERROR
    try:
        store = open_store(settings)
        renderer = Renderer(store, settings.public_url, settings.store.ttl_s)
        train = TrainSettings.from_group(tree.train)
        runtime = open_runtime(settings, store, engine_settings.fetch, renderer, train)
        api = open_replicate_api(settings, runtime, renderer, engine_settings.caps)
    except Exception as err:  # a database that cannot be opened: say which and why
        print(f"sdxl api: refusing to start: the prediction store: {err}", file=sys.stderr)
        return USAGE_ERROR
    api_keys = None
    if keys is not None:
        api_keys = ApiKeys(keys, api.store.setting("tenant_salt", new_salt).encode())
        # The count and the tenants' names, never the keys.
        log.info("authentication on: %d API keys of tenants %s", len(keys), api_keys.tenants)
    service = Service(Engine(model_settings, engine_settings, queue=runtime.queue))
    app = create_app(service, settings, api_keys, api)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_config=None,  # keep the logging set up above
        timeout_graceful_shutdown=None,  # never cut off a generation that was accepted
    )
    log.info(
        "serving on http://%s:%d (weights %s, queue %d, body limit %d bytes)",
        args.host,
        args.port,
        model_settings.weights_dir,
        settings.queue_size,
        settings.max_body_bytes,
    )
    server = DrainingServer(config, service)
    try:
        server.run()
    except SystemExit as stop:  # uvicorn exits this way when it cannot bind
        return stop.code if isinstance(stop.code, int) else 1
    if server.force_exit:  # a third Ctrl+C: do not wait for the generation still running
        logging.shutdown()
        os._exit(1)
    if service.engine.state == EngineState.LOAD_FAILED:
        print(f"sdxl api: the model failed to load: {service.reason}", file=sys.stderr)
        return 1
    return 0
