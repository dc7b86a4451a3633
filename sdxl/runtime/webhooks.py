"""Webhooks, signed as Replicate signs them and delivered off the engine's threads.

Each delivery is a POST of the prediction object with `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
base64-decoded part of the secret after `whsec_`, so the official clients' validators accept
it. A few worker threads send them, in order per prediction; a receiver that is down or slow
delays only its own deliveries, which are retried with backoff and then given up with a log
line. A newer progress event replaces one still waiting, so a slow receiver gets the latest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sdxl.config import ANONYMOUS
from sdxl.inputs.surface import Problem
from sdxl.net import http_get
from sdxl.net.urls import redact

log = logging.getLogger(__name__)

EVENTS = ("start", "output", "logs", "completed")
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # then given up
CLOSE_GRACE_S = 10.0  # at a stop, how long queued deliveries still get (one attempt each)
TIMEOUT_S = 10.0
# Stored with each prediction and sent at every event; 2048 is what browsers, proxies and
# servers commonly accept, and far more than any receiver's URL needs.
MAX_WEBHOOK_CHARS = 2048


def check_webhook(webhook, wanted) -> list[Problem]:
    """What is wrong with a create's `webhook` and `webhook_events_filter` (predictions' and
    trainings' alike)."""
    problems = []
    if webhook is not None:
        why = _bad_url(webhook)
        if why:
            problems.append(Problem("webhook", why))
    if wanted is not None and not (
        isinstance(wanted, list) and all(event in EVENTS for event in wanted)
    ):
        problems.append(Problem("webhook_events_filter", f"must list some of: {', '.join(EVENTS)}"))
    return problems


def _bad_url(webhook) -> str | None:
    """Why `webhook` cannot be delivered to, or None."""
    if not (isinstance(webhook, str) and webhook.startswith(("http://", "https://"))):
        return "must be an http(s) URL"
    if len(webhook) > MAX_WEBHOOK_CHARS:
        return f"is {len(webhook)} characters long; the limit is {MAX_WEBHOOK_CHARS}"
    if any(ch.isspace() or not ch.isprintable() for ch in webhook):
        return "must be an http(s) URL without spaces or control characters"
    try:
        parts = urlsplit(webhook)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError:
        return "must be a well-formed http(s) URL (its host or port cannot be read)"
    if not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (user:password@): they are never sent"
    return None


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_headers(secret: str, body: bytes, message_id: str, timestamp: int) -> dict:
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{digest}",
    }


@dataclass
class _Delivery:
    url: str
    event: str
    payload: Callable[[], dict]  # rendered when sent: the prediction as it is then
    secret: str  # the prediction's tenant's
    attempts: int = 0
    message_id: str = field(default_factory=lambda: f"msg_{secrets.token_hex(12)}")


class Webhooks:
    def __init__(self, secret: str, public_only: bool = False, workers: int = 4):
        self.secret = secret
        self.public_only = public_only
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sdxl-webhook")
        self._lock = threading.Lock()
        self._pending: dict[str, deque[_Delivery]] = {}
        self.given_up = 0
        self._stopping = threading.Event()  # no more retries
        self._abandoned = threading.Event()  # what is still queued is dropped
        self._sending: set[str] = set()  # predictions whose first queued delivery is under way

    def secret_for(self, tenant: str | None) -> str:
        """The secret `tenant`'s webhooks are signed with: its own, derived from the server's,
        so that no tenant can sign a webhook another tenant's receiver would accept (the
        server's own without keys, and for predictions from before tenants)."""
        if tenant is None or tenant == ANONYMOUS:
            return self.secret
        key = base64.b64decode(self.secret.split("_", 1)[1])
        derived = hmac.new(key, b"sdxl-tenant:" + tenant.encode(), hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(derived).decode()

    def send(
        self,
        prediction_id: str,
        url: str | None,
        event: str,
        wanted,
        payload,
        tenant: str | None = None,
    ) -> None:
        """Queue `event` for `url` unless the prediction's filter leaves it out."""
        if not url or (wanted is not None and event not in wanted):
            return
        delivery = _Delivery(url, event, payload, self.secret_for(tenant))
        with self._lock:
            queue = self._pending.get(prediction_id)
            if queue is None:
                self._pending[prediction_id] = deque([delivery])
                self._pool.submit(self._drain, prediction_id)
                return
            waiting = queue[-1] if len(queue) > 1 else None  # queue[0] is being sent
            if waiting is not None and waiting.event == event and event in ("logs", "output"):
                queue[-1] = delivery  # a newer progress event replaces the one not yet sent
            else:
                queue.append(delivery)

    def close(self, timeout: float = CLOSE_GRACE_S) -> None:
        """The server stops: queued deliveries get one attempt each for `timeout` seconds, no
        retries; what is left then is given up (logged), so hostile receivers cannot hold the
        stop (the process waits for this pool's threads at exit)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.05)
        with self._lock:
            self._abandoned.set()
            queued = sum(len(queue) for queue in self._pending.values())
            left = queued - len(self._sending)  # those under way count themselves
            self.given_up += left
        if left:
            log.warning("the server stopped: gave up %d queued webhook deliveries", left)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _drain(self, prediction_id: str) -> None:
        while True:
            with self._lock:
                queue = self._pending[prediction_id]
                if not queue or self._abandoned.is_set():  # close() counted what is left
                    del self._pending[prediction_id]
                    return
                delivery = queue[0]
                self._sending.add(prediction_id)
            self._deliver(prediction_id, delivery)
            with self._lock:
                self._pending[prediction_id].popleft()
                self._sending.discard(prediction_id)

    def _deliver(self, prediction_id: str, delivery: _Delivery) -> None:
        body = json.dumps(delivery.payload()).encode()
        shown = redact(delivery.url)
        for delay in (*RETRY_DELAYS_S, None):
            delivery.attempts += 1
            stamp = int(time.time())
            headers = signature_headers(delivery.secret, body, delivery.message_id, stamp)
            why = self._post(delivery.url, body, headers)
            if why is None:
                return
            if why.startswith("HTTP 4") and why != "HTTP 429":
                break  # the receiver refuses it: retrying would not help
            if delay is None or self._stopping.wait(delay):  # a stopping server stops retrying
                break
        self.given_up += 1
        log.warning(
            "gave up the %s webhook of prediction %s to %s after %d attempts (%s)",
            delivery.event,
            prediction_id,
            shown,
            delivery.attempts,
            why,
        )

    def _post(self, url: str, body: bytes, headers: dict) -> str | None:
        """None when delivered (2xx), else why not."""

        def fail(why: str) -> Exception:
            return OSError(why)

        limits = http_get.Limits(
            connect_timeout=TIMEOUT_S,
            read_timeout=TIMEOUT_S,
            deadline=time.monotonic() + TIMEOUT_S * 2,
            max_redirects=0,
            public_only=self.public_only,
        )
        try:
            status = http_get.post(url, body, headers, limits, fail)
        except OSError as err:
            return str(err)
        return None if 200 <= status < 300 else f"HTTP {status}"

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once nothing is waiting to be sent (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.05)
        return False
